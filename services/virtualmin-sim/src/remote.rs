//! What remote.cgi does between miniserv and the program (reference §1, §2):
//! decoding the parameter pairs, turning them into argv (LF splits a value
//! into more arguments), and converting the program's text output to the
//! JSON structure json-lib.pl builds, encoded like `JSON::PP` with Perl's random
//! key order.

use std::fmt::Write as _;

/// A decoded `name=value` pair, in the order sent.
pub(crate) type Pair = (String, String);

/// Decodes `a=1&b=%0A+x` into pairs: `+` is a space, `%XX` a byte, `%zz` NUL.
pub(crate) fn parse_pairs(text: &str) -> Vec<Pair> {
    if text.is_empty() {
        return Vec::new();
    }
    text.split('&')
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' if index + 2 < bytes.len() => {
                let hex = text.get(index + 1..index + 3).unwrap_or_default();
                // Perl's hex() of a non-hex pair is 0: `%zz` decodes to NUL.
                out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                index += 2;
            }
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The program's argv, built from the raw pairs as remote.cgi does: the
/// `program` pair and the pair named after the chosen format are skipped; an
/// empty name gives `--`; a value is split on LF (trailing empty pieces
/// dropped, like Perl's `split`), so every piece becomes an argument.
pub(crate) fn argv(pairs: &[Pair], format_name: Option<&str>) -> Vec<String> {
    let mut args = Vec::new();
    for (name, value) in pairs {
        if name == "program" || Some(name.as_str()) == format_name {
            continue;
        }
        if name.is_empty() {
            args.push("--".to_owned());
            continue;
        }
        args.push(format!("--{name}"));
        let mut pieces: Vec<&str> = value.split('\n').collect();
        while pieces.last().is_some_and(|piece| piece.is_empty()) {
            pieces.pop();
        }
        args.extend(pieces.into_iter().map(str::to_owned));
    }
    args
}

/// A node of the converted reply; every scalar is a string or null.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Node {
    Str(Option<String>),
    List(Vec<Node>),
    Object(Vec<(String, Node)>),
}

fn text(value: &str) -> Node {
    Node::Str(Some(value.to_owned()))
}

/// `split(/\r?\n/, text)` with trailing empty fields dropped.
fn perl_lines(output: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = output.split('\n').map(|line| line.strip_suffix('\r').unwrap_or(line)).collect();
    while lines.last().is_some_and(|line| line.is_empty()) {
        lines.pop();
    }
    lines
}

/// Keys: ASCII-lowercased, every whitespace character replaced by `_`.
fn normalise_key(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_whitespace() { '_' } else { c.to_ascii_lowercase() }).collect()
}

/// json-lib.pl's `convert_remote_format`; `params` are the names remote.cgi
/// sees after forcing `multiline`.
pub(crate) fn convert(output: &str, exit_status: i32, command: &str, params: &[&str]) -> Node {
    let mut fields = vec![
        ("command".to_owned(), text(command)),
        ("status".to_owned(), text(if exit_status == 0 { "success" } else { "failure" })),
    ];
    let lines = perl_lines(output);
    let has = |name: &str| params.contains(&name);
    if exit_status != 0 {
        let first = lines.iter().find(|line| line.chars().any(|c| !c.is_ascii_whitespace()));
        fields.push(("error".to_owned(), Node::Str(first.map(|line| (*line).to_owned()))));
        fields.push(("full_error".to_owned(), Node::Str((!output.is_empty()).then(|| output.to_owned()))));
    } else if ((command.starts_with("list-") || command.starts_with("get-dns")) && has("multiline"))
        || command.starts_with("list-php-ini")
        || command.starts_with("get-command")
    {
        fields.push(("data".to_owned(), Node::List(multiline(&lines))));
    } else if command.starts_with("list-") && (has("name-only") || has("id-only")) {
        fields.push(("data".to_owned(), Node::List(lines.iter().map(|line| text(line)).collect())));
    } else if command == "list-bandwidth" {
        fields.push(("data".to_owned(), Node::List(bandwidth(&lines))));
    } else {
        fields.push(("output".to_owned(), text(output)));
    }
    Node::Object(fields)
}

fn multiline(lines: &[&str]) -> Vec<Node> {
    let mut items = Vec::new();
    let mut current: Option<Vec<(String, Node)>> = None;
    let mut started = false;
    let flush = |items: &mut Vec<Node>, name: &mut Option<String>, current: &mut Option<Vec<(String, Node)>>| {
        if let (Some(name), Some(values)) = (name.take(), current.take()) {
            items.push(Node::Object(vec![
                ("name".to_owned(), text(&name)),
                ("values".to_owned(), Node::Object(values)),
            ]));
        }
    };
    let mut name: Option<String> = None;
    for line in lines {
        let starts_visible = line.chars().next().is_some_and(|c| !c.is_ascii_whitespace());
        if starts_visible
            && !started
            && let Some((key, value)) = line.split_once(':').filter(|(key, _)| key.len() > 1)
        {
            items.push(Node::Object(vec![
                ("name".to_owned(), text(key)),
                ("value".to_owned(), text(value.trim_start())),
            ]));
            continue;
        }
        if starts_visible {
            flush(&mut items, &mut name, &mut current);
            started = true;
            name = Some((*line).to_owned());
            current = Some(Vec::new());
            continue;
        }
        let trimmed = line.trim_start();
        if trimmed.len() == line.len() || trimmed.is_empty() {
            continue;
        }
        let Some((key, value)) = trimmed.split_once(':') else { continue };
        started = true;
        let values = current.get_or_insert_with(Vec::new);
        let key = normalise_key(key);
        let value = value.trim_start_matches([' ', '\t']).to_owned();
        match values.iter_mut().find(|(existing, _)| *existing == key) {
            Some((_, Node::List(list))) => list.push(Node::Str(Some(value))),
            _ => values.push((key, Node::List(vec![Node::Str(Some(value))]))),
        }
    }
    flush(&mut items, &mut name, &mut current);
    items
}

fn bandwidth(lines: &[&str]) -> Vec<Node> {
    let mut items: Vec<(String, Vec<Node>)> = Vec::new();
    for line in lines {
        if let Some(domain) = line.strip_suffix(':').filter(|d| !d.contains(char::is_whitespace)) {
            items.push((domain.to_owned(), Vec::new()));
            continue;
        }
        let trimmed = line.trim_start();
        let Some((date, counts)) = trimmed.split_once(':') else { continue };
        let mut day = vec![("date".to_owned(), text(date))];
        for pair in counts.split_whitespace() {
            let (kind, bytes) = pair.split_once(':').unwrap_or((pair, ""));
            day.push((kind.to_owned(), Node::Str((!bytes.is_empty()).then(|| bytes.to_owned()))));
        }
        if let Some((_, days)) = items.last_mut() {
            days.push(Node::Object(day));
        }
    }
    items
        .into_iter()
        .map(|(name, days)| Node::Object(vec![("name".to_owned(), text(&name)), ("bw".to_owned(), Node::List(days))]))
        .collect()
}

/// Encodes like `JSON::PP`: pretty (3-space indent, `"key" : value`, ends
/// `}\n\n`) or minified (ends `}\n`), keys shuffled, non-ASCII unescaped.
pub(crate) fn encode(node: &Node, rng: &mut fastrand::Rng, minified: bool) -> String {
    let mut out = String::with_capacity(4096);
    write_node(node, rng, minified, 0, &mut out);
    out.push_str(if minified { "\n" } else { "\n\n" });
    out
}

fn write_node(node: &Node, rng: &mut fastrand::Rng, minified: bool, depth: usize, out: &mut String) {
    let indent = |out: &mut String, depth: usize| {
        if !minified {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', depth * 3));
        }
    };
    match node {
        Node::Str(None) => out.push_str("null"),
        Node::Str(Some(value)) => write_string(value, out),
        Node::List(items) if items.is_empty() => out.push_str("[]"),
        Node::List(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                indent(out, depth + 1);
                write_node(item, rng, minified, depth + 1, out);
            }
            indent(out, depth);
            out.push(']');
        }
        Node::Object(fields) if fields.is_empty() => out.push_str("{}"),
        Node::Object(fields) => {
            let mut order: Vec<usize> = (0..fields.len()).collect();
            rng.shuffle(&mut order);
            out.push('{');
            for (position, index) in order.into_iter().enumerate() {
                if position > 0 {
                    out.push(',');
                }
                indent(out, depth + 1);
                let (key, value) = &fields[index];
                write_string(key, out);
                out.push_str(if minified { ":" } else { " : " });
                write_node(value, rng, minified, depth + 1, out);
            }
            indent(out, depth);
            out.push('}');
        }
    }
}

fn write_string(value: &str, out: &mut String) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{c}' => out.push_str("\\f"),
            '\u{8}' => out.push_str("\\b"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv_of(query: &str) -> Vec<String> {
        argv(&parse_pairs(query), Some("json"))
    }

    #[test]
    fn argv_follows_the_reference_table() {
        assert_eq!(argv_of("program=x&domain=a.com&json=1"), ["--domain", "a.com"]);
        assert_eq!(argv_of("multiline="), ["--multiline"]);
        assert_eq!(argv_of("domain=a.com&domain=b.com"), ["--domain", "a.com", "--domain", "b.com"]);
        assert_eq!(argv_of("desc=x%0A--pass%0Ahacked"), ["--desc", "x", "--pass", "hacked"]);
        assert_eq!(argv_of("pass=%0Asecret"), ["--pass", "", "secret"]);
        assert_eq!(argv_of("pass=a%0A%0Ab"), ["--pass", "a", "", "b"]);
        assert_eq!(argv_of("pass=%0A"), ["--pass"]);
        assert_eq!(argv_of("pass=a%0D%0Ab"), ["--pass", "a\r", "b"]);
        assert_eq!(argv_of("a=1&&b=2"), ["--a", "1", "--", "--b", "2"]);
        assert_eq!(argv_of("multiline=True"), ["--multiline", "True"]);
        assert_eq!(argv(&parse_pairs("json=1&xml=1"), Some("json")), ["--xml", "1"]);
        assert_eq!(argv_of("desc=a+b%zz"), ["--desc", "a b\0"]);
    }

    #[test]
    fn multiline_conversion_normalises_keys_and_appends_values() {
        let output = "a.com\n    Maximum sub-servers: 5\n    SSL cert used by: x\n    SSL cert used by: y\n    MTA-STS status: on\nb.com\n";
        let node = convert(output, 0, "list-domains", &["multiline"]);
        let mut rng = fastrand::Rng::with_seed(1);
        let json = encode(&node, &mut rng, true);
        assert!(json.contains("\"maximum_sub-servers\":[\"5\"]"), "{json}");
        assert!(json.contains("\"ssl_cert_used_by\":[\"x\",\"y\"]"), "{json}");
        assert!(json.contains("\"mta-sts_status\":[\"on\"]"), "{json}");
        assert!(
            json.contains("{\"name\":\"b.com\",\"values\":{}}") || json.contains("{\"values\":{},\"name\":\"b.com\"}")
        );
    }

    #[test]
    fn failures_carry_the_first_line_and_full_text() {
        let node = convert("\nVirtual server x does not exist\n\nusage\n", 256, "list-domains", &["multiline"]);
        let Node::Object(fields) = node else { panic!("object") };
        assert!(fields.contains(&("error".to_owned(), text("Virtual server x does not exist"))));
    }

    #[test]
    fn pretty_encoding_matches_json_pp_layout() {
        let node = Node::Object(vec![("a".to_owned(), Node::List(vec![])), ("b".to_owned(), Node::Object(vec![]))]);
        let mut rng = fastrand::Rng::with_seed(3);
        let json = encode(&node, &mut rng, false);
        assert!(
            json == "{\n   \"a\" : [],\n   \"b\" : {}\n}\n\n" || json == "{\n   \"b\" : {},\n   \"a\" : []\n}\n\n",
            "{json}"
        );
    }
}
