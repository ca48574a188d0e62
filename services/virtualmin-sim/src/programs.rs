//! The remote programs, as command-line programs: each reads its argv the way
//! the Perl program does (an option takes the next argument whatever it is;
//! an unknown one is a usage error), changes the data set, prints text and
//! exits with a status. remote.cgi's converter turns that into JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::dataset::{BLOCK, Dataset, Kind, domain_fields, nice_size};

/// What a program printed and its wait status (`256` for `exit 1`).
#[derive(Debug)]
pub(crate) struct ProgramRun {
    pub(crate) output: String,
    pub(crate) exit_status: i32,
}

impl ProgramRun {
    fn ok(output: String) -> Self {
        Self { output, exit_status: 0 }
    }

    fn usage(message: &str, usage: &str) -> Self {
        Self { output: format!("{message}\n\n{usage}"), exit_status: 256 }
    }
}

/// Programs this simulator implements.
pub(crate) const PROGRAMS: [&str; 10] = [
    "list-domains",
    "list-bandwidth",
    "list-plans",
    "info",
    "create-domain",
    "delete-domain",
    "disable-domain",
    "enable-domain",
    "modify-domain",
    "backup-domain",
];

/// How a program reads its options.
struct OptionSpec {
    /// Take the next argument, whatever it is.
    values: &'static [&'static str],
    /// Take the next argument only if it does not start with `-`.
    optional_values: &'static [&'static str],
    /// Bare flags.
    flags: &'static [&'static str],
}

/// Parsed options: repeated values are kept in order.
#[derive(Debug, Default)]
struct Options {
    values: BTreeMap<String, Vec<String>>,
    flags: Vec<String>,
}

impl Options {
    fn one(&self, name: &str) -> Option<&str> {
        self.values.get(name).and_then(|values| values.last()).map(String::as_str)
    }

    fn all(&self, name: &str) -> &[String] {
        self.values.get(name).map_or(&[], Vec::as_slice)
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|flag| flag == name)
    }
}

fn parse(args: &[String], spec: &OptionSpec) -> Result<Options, String> {
    let mut options = Options::default();
    let mut index = 0;
    while index < args.len() {
        let arg = &args[index];
        index += 1;
        let Some(name) = arg.strip_prefix("--") else {
            return Err(format!("Unknown parameter {arg}"));
        };
        if spec.values.contains(&name) {
            let value = args.get(index).cloned().unwrap_or_default();
            index += 1;
            options.values.entry(name.to_owned()).or_default().push(value);
        } else if spec.optional_values.contains(&name) {
            let value = args.get(index).filter(|next| !next.starts_with('-')).cloned();
            if value.is_some() {
                index += 1;
            }
            options.values.entry(name.to_owned()).or_default().push(value.unwrap_or_default());
        } else if spec.flags.contains(&name) {
            options.flags.push(name.to_owned());
        } else {
            return Err(format!("Unknown parameter {arg}"));
        }
    }
    Ok(options)
}

const LIST_DOMAINS_USAGE: &str = "Lists the virtual servers on this system.\n\nvirtualmin list-domains [--multiline | --simple-multiline |\n                         --json | --xml]\n                        [--name-only | --id-only | --user-only |\n                         --home-only | --file-only | --ip-only |\n                         --ip6-only]\n                        [--domain name]*\n                        [--user name]*\n                        [--mail-user name]*\n                        [--id number]*\n                        [--with-feature feature]\n                        [--without-feature feature]\n                        [--with-web] [--with-ssl]\n                        [--alias domain | --no-alias]\n                        [--subserver | --toplevel | --subdomain]\n                        [--parent domain]\n                        [--plan ID|name]\n                        [--template ID|name]\n                        [--disabled | --enabled]\n                        [--php-mode cgi|fcgid|fpm|mod_php]\n                        [--ip address]\n";
const LIST_BANDWIDTH_USAGE: &str = "Shows bandwidth usage by domain, date and feature\n\nvirtualmin list-bandwidth --domain name | --all-domains\n                         [--start yyyy-mm-dd]\n                         [--end yyyy-mm-dd]\n                         [--include-subservers]\n";
const LIST_PLANS_USAGE: &str = "Lists the available account plans for virtual servers.\n\nvirtualmin list-plans [--multiline | --name-only | --id-only]\n                     [--id number | --name \"plan name\"]\n";
const CREATE_USAGE: &str = "Adds a new Virtualmin virtual server, with the settings and features\nspecified on the command line.\n\nvirtualmin create-domain --domain domain.name\n                         --pass \"password-for-new-domain\" |\n                         --passfile password-file\n                        [...usage continues...]\n";
const DELETE_USAGE: &str = "Deletes an existing Virtualmin virtual server and all sub-servers,\nmail users and databases.\n\nvirtualmin delete-domain [--domain name]* [--user username]*\n                         [--only] [--preserve-remote]\n";
const DISABLE_USAGE: &str = "Disables all features in the specified virtual server.\n\nvirtualmin disable-domain --domain domain.name\n                         [--why \"explanation for disable\"]\n                         [--subservers]\n                         [--feature name]*\n                         [--schedule days|timestamp|none]\n";
const ENABLE_USAGE: &str = "Enables all disabled features in the specified virtual server.\n\nvirtualmin enable-domain --domain domain.name\n                        [--subservers]\n";
const MODIFY_USAGE: &str = "Changes the settings for a Virtualmin server, based on the specified\ncommand-line parameters.\n\nvirtualmin modify-domain --domain domain.name\n                        [...usage continues...]\n";
const BACKUP_USAGE: &str = "Creates a Virtualmin backup, for the domains and features specified\non the command line.\n\nvirtualmin backup-domain [--dest file]+\n                        [...usage continues...]\n";

/// `first_print`/`second_print` pairs: `msg\n` then `.. done\n\n`.
fn steps(indent: &str, lines: &[String]) -> String {
    lines.iter().fold(String::new(), |mut out, line| {
        let _ = write!(out, "{indent}{line}\n{indent}.. done\n\n");
        out
    })
}

/// Runs `program` with `args` against `data`.
pub(crate) fn run(program: &str, args: &[String], data: &mut Dataset, hostname: &str) -> ProgramRun {
    match program {
        "list-domains" => list_domains(args, data),
        "list-bandwidth" => list_bandwidth(args, data),
        "list-plans" => list_plans(args),
        "info" => info(args, data, hostname),
        "create-domain" => create_domain(args, data),
        "delete-domain" => delete_domain(args, data),
        "disable-domain" => disable_domain(args, data),
        "enable-domain" => enable_domain(args, data),
        "modify-domain" => modify_domain(args, data),
        "backup-domain" => backup_domain(args, data),
        other => ProgramRun { output: format!("Unknown program {other}\n"), exit_status: 256 },
    }
}

#[allow(clippy::too_many_lines)] // selection, filters and four output modes, in the order list-domains.pl runs them
fn list_domains(args: &[String], data: &Dataset) -> ProgramRun {
    let spec = OptionSpec {
        values: &[
            "domain",
            "user",
            "id",
            "plan",
            "template",
            "parent",
            "with-feature",
            "without-feature",
            "mail-user",
            "reseller",
            "php-mode",
            "ip",
        ],
        optional_values: &["alias"],
        flags: &[
            "multiline",
            "simple-multiline",
            "name-only",
            "id-only",
            "user-only",
            "home-only",
            "file-only",
            "toplevel",
            "subserver",
            "subdomain",
            "enabled",
            "disabled",
            "no-alias",
            "with-web",
            "with-ssl",
            "json",
            "xml",
        ],
    };
    let options = match parse(args, &spec) {
        Ok(options) => options,
        Err(message) => return ProgramRun::usage(&message, LIST_DOMAINS_USAGE),
    };
    let mut selected: Vec<usize> = Vec::new();
    let filtered_by_name =
        !options.all("domain").is_empty() || !options.all("user").is_empty() || !options.all("id").is_empty();
    for name in options.all("domain") {
        match data.find(name) {
            Some(index) => selected.push(index),
            None => return ProgramRun::usage(&format!("Virtual server {name} does not exist"), LIST_DOMAINS_USAGE),
        }
    }
    for user in options.all("user") {
        let owned: Vec<usize> = (0..data.domains.len()).filter(|i| data.domains[*i].user == *user).collect();
        if !owned.iter().any(|i| data.domains[*i].kind == Kind::Top) {
            return ProgramRun::usage(&format!("No top-level domain owned by {user} exists"), LIST_DOMAINS_USAGE);
        }
        selected.extend(owned);
    }
    for id in options.all("id") {
        match data.domains.iter().position(|d| d.id == *id) {
            Some(index) => selected.push(index),
            None => return ProgramRun::usage(&format!("No virtual server with ID {id} exists"), LIST_DOMAINS_USAGE),
        }
    }
    let order = data.sorted();
    let mut domains: Vec<usize> =
        order.into_iter().filter(|index| !filtered_by_name || selected.contains(index)).collect();
    domains.retain(|index| {
        let domain = &data.domains[*index];
        (!options.flag("toplevel") || domain.kind == Kind::Top)
            && (!options.flag("subserver") || domain.kind != Kind::Top)
            && (!options.flag("no-alias") || domain.kind != Kind::Alias)
            && (!options.flag("enabled") || domain.disabled.is_none())
            && (!options.flag("disabled") || domain.disabled.is_some())
            && options.one("plan").is_none_or(|plan| domain.plan_id == plan || domain.plan_name == plan)
            && options
                .one("parent")
                .is_none_or(|parent| domain.parent.as_deref() == Some(parent) && domain.kind == Kind::Sub)
    });
    // The later output selector wins, as in parse_common_cli_flags.
    let selector = args.iter().rev().find_map(|arg| match arg.as_str() {
        "--multiline" => Some("multiline"),
        "--simple-multiline" => Some("simple"),
        "--name-only" => Some("name"),
        "--id-only" => Some("id"),
        _ => None,
    });
    let mut out = String::with_capacity(domains.len() * 3000);
    match selector {
        Some("multiline" | "simple") => {
            let full = selector == Some("multiline");
            for index in domains {
                let domain = &data.domains[index];
                out.push_str(&domain.name);
                out.push('\n');
                for (label, value) in domain_fields(data, domain, full) {
                    let _ = writeln!(out, "    {label}: {value}");
                }
            }
        }
        Some("name") => domains.iter().for_each(|i| {
            let _ = writeln!(out, "{}", data.domains[*i].name);
        }),
        Some(_) => domains.iter().for_each(|i| {
            let _ = writeln!(out, "{}", data.domains[*i].id);
        }),
        None => {
            let _ = writeln!(out, "{:<30.30} {:<15.15} {:<30.30}", "Domain", "Username", "Description");
            let _ = writeln!(out, "{:<30.30} {:<15.15} {:<30.30}", "-".repeat(30), "-".repeat(15), "-".repeat(30));
            for index in domains {
                let domain = &data.domains[index];
                let _ = writeln!(out, "{:<30.30} {:<15.15} {:<30.30}", domain.name, domain.user, domain.description);
            }
        }
    }
    ProgramRun::ok(out)
}

fn parse_day(text: &str) -> Option<u64> {
    let mut parts = text.split('-');
    let (year, month, day): (i64, i64, i64) =
        (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    // Days from civil (Howard Hinnant's algorithm).
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let doy = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    u64::try_from(era * 146_097 + doe - 719_468).ok()
}

fn list_bandwidth(args: &[String], data: &Dataset) -> ProgramRun {
    let spec = OptionSpec {
        values: &["domain", "start", "end"],
        optional_values: &[],
        flags: &["all-domains", "include-subservers", "multiline", "simple-multiline", "json", "xml"],
    };
    let options = match parse(args, &spec) {
        Ok(options) => options,
        Err(message) => return ProgramRun::usage(&message, LIST_BANDWIDTH_USAGE),
    };
    let mut domains: Vec<usize> = Vec::new();
    if options.flag("all-domains") {
        domains = data.sorted().into_iter().filter(|i| data.domains[*i].kind == Kind::Top).collect();
    } else {
        if options.all("domain").is_empty() {
            return ProgramRun::usage("No domain names specified", LIST_BANDWIDTH_USAGE);
        }
        for name in options.all("domain") {
            match data.find(name) {
                Some(index) => domains.push(index),
                None => {
                    return ProgramRun::usage(&format!("Virtual server {name} does not exist"), LIST_BANDWIDTH_USAGE);
                }
            }
        }
    }
    let today = data.now() / 86_400;
    let start = match options.one("start") {
        Some(text) => match parse_day(text) {
            Some(day) => day,
            None => return ProgramRun::usage("Start date must be in YYYY-MM-DD format", LIST_BANDWIDTH_USAGE),
        },
        None => today - 6,
    };
    let end = options.one("end").and_then(parse_day).unwrap_or(today);
    let mut out = String::new();
    for index in domains {
        let name = &data.domains[index].name;
        let _ = writeln!(out, "{name}:");
        for day in start..=end {
            let (year, month, day_of_month) = crate::dataset::civil_from_days(i64::try_from(day).unwrap_or_default());
            let counts: Vec<String> =
                Dataset::traffic(name, day).into_iter().map(|(kind, bytes)| format!("{kind}:{bytes}")).collect();
            let _ = writeln!(out, "    {year:04}-{month:02}-{day_of_month:02}: {}", counts.join(" "));
        }
    }
    ProgramRun::ok(out)
}

fn list_plans(args: &[String]) -> ProgramRun {
    let spec = OptionSpec {
        values: &["id", "name"],
        optional_values: &[],
        flags: &["multiline", "name-only", "id-only", "json", "xml"],
    };
    let options = match parse(args, &spec) {
        Ok(options) => options,
        Err(message) => return ProgramRun::usage(&message, LIST_PLANS_USAGE),
    };
    let maxes = ["mailbox", "alias", "dbs", "doms", "aliasdoms", "realdoms"]
        .iter()
        .fold(String::new(), |out, name| out + &format!("    Maximum {name}: Unlimited\n"));
    let tail = "    Can choose database names: Yes\n    Can rename domains: No\n    Can migrate backups: No\n    Allowed features: Automatic\n    Resellers: All\n";
    let plans = [
        (
            "0",
            format!(
                "0\n    Name: Default Plan\n    Server block quota: Unlimited\n    Administrator block quota: Unlimited\n{maxes}    Maximum bw: Unlimited\n{tail}"
            ),
        ),
        (
            "1732184732123450",
            format!(
                "1732184732123450\n    Name: Starter 5G\n    Server block quota: 5242880\n    Server quota: {size}\n    Administrator block quota: 5242880\n    Administrator quota: {size}\n{maxes}    Maximum bw: 107374182400\n{tail}",
                size = nice_size(5_242_880 * BLOCK)
            ),
        ),
    ];
    if let Some(id) = options.one("id")
        && !plans.iter().any(|(plan_id, _)| plan_id == &id)
    {
        return ProgramRun::usage(&format!("No plan with ID {id} was found"), LIST_PLANS_USAGE);
    }
    let output = plans
        .iter()
        .filter(|(id, _)| options.one("id").is_none_or(|wanted| wanted == *id))
        .map(|(_, text)| text.as_str())
        .collect();
    ProgramRun::ok(output)
}

fn info(args: &[String], data: &Dataset, hostname: &str) -> ProgramRun {
    let spec = OptionSpec { values: &["search"], optional_values: &[], flags: &["json", "xml"] };
    let options = match parse(args, &spec) {
        Ok(options) => options,
        Err(message) => return ProgramRun::usage(&message, "Shows information about this system.\n"),
    };
    let count = data.domains.len();
    let sections = [
        ("cpu", "cpu: \n    * 3\n    * 1\n    * 96\n    * 0\n    * 0\n".to_owned()),
        ("disk_free", "disk_free: 412318228480\n".to_owned()),
        ("disk_total", "disk_total: 536870912000\n".to_owned()),
        ("fcount", format!("fcount: \n    dns: {count}\n    doms: {count}\n    mail: {count}\n    web: {count}\n")),
        (
            "host",
            format!(
                "host: \n    hostname: {hostname}\n    module root: /usr/share/webmin/virtual-server\n    os: Ubuntu Linux 24.04\n    root: /usr/share/webmin\n    theme version: 25.20\n    virtualmin edition: GPL\n    virtualmin version: 8.1.0\n    webmin version: 2.660\n"
            ),
        ),
        ("kernel", "kernel: \n    arch: x86_64\n    os: Linux\n    version: 6.8.0-60-generic\n".to_owned()),
        ("load", "load: \n    * 0.42\n    * 0.38\n    * 0.35\n".to_owned()),
        ("mem", "mem: \n    * 16365020\n    * 9123452\n    * 4194300\n    * 4100004\n".to_owned()),
        ("procs", "procs: 287\n".to_owned()),
    ];
    let output = sections
        .iter()
        .filter(|(name, _)| options.one("search").is_none_or(|search| name.contains(search)))
        .map(|(_, text)| text.as_str())
        .collect();
    ProgramRun::ok(output)
}

fn check_quota(value: Option<&str>) -> Result<Option<u64>, ()> {
    match value {
        None => Ok(None),
        Some("UNLIMITED") => Ok(Some(0)),
        Some(text) => text.parse().map(Some).map_err(|_| ()),
    }
}

#[allow(clippy::too_many_lines)] // the checks of create-domain.pl, in its order, then the creation
fn create_domain(args: &[String], data: &mut Dataset) -> ProgramRun {
    let spec = OptionSpec {
        values: &[
            "domain",
            "pass",
            "passfile",
            "desc",
            "user",
            "plan",
            "parent",
            "alias",
            "subdom",
            "quota",
            "uquota",
            "bandwidth",
            "ip",
            "template",
        ],
        optional_values: &["email"],
        flags: &[
            "default-features",
            "features-from-plan",
            "limits-from-plan",
            "unix",
            "dir",
            "web",
            "dns",
            "mail",
            "ssl",
            "mysql",
            "webmin",
            "logrotate",
            "spam",
            "virus",
            "skip-warnings",
            "allocate-ip",
            "shared-ip",
        ],
    };
    let options = match parse(args, &spec) {
        Ok(options) => options,
        Err(message) => return ProgramRun::usage(&message, CREATE_USAGE),
    };
    let Some(name) = options.one("domain").filter(|name| !name.is_empty()) else {
        return ProgramRun::usage("No domain specified", CREATE_USAGE);
    };
    let parent = options.one("parent").or(options.one("alias"));
    if parent.is_none() && options.one("pass").is_none_or(str::is_empty) && options.one("passfile").is_none() {
        return ProgramRun::usage("No password specified", CREATE_USAGE);
    }
    let explicit_features = ["unix", "dir", "web", "dns", "mail", "ssl", "mysql"].iter().any(|f| options.flag(f));
    if !options.flag("default-features") && !options.flag("features-from-plan") && !explicit_features {
        return ProgramRun::usage("No virtual server features enabled", CREATE_USAGE);
    }
    if options.one("desc").is_some_and(|desc| desc.contains(':')) {
        return ProgramRun::usage("Description cannot contain the : character", CREATE_USAGE);
    }
    let (Ok(quota), Ok(uquota)) = (check_quota(options.one("quota")), check_quota(options.one("uquota"))) else {
        return ProgramRun::usage("Quota must be a number of blocks", CREATE_USAGE);
    };
    if quota.is_some() != uquota.is_some() {
        return ProgramRun::usage("No quota specified", CREATE_USAGE);
    }
    if data.find(name).is_some() {
        return ProgramRun::usage("You are already hosting this domain", CREATE_USAGE);
    }
    let index = match (options.one("parent"), options.one("alias")) {
        (Some(parent), _) => match data.find(parent) {
            Some(parent) => data.add_sub(parent, Some(name)),
            None => return ProgramRun::usage(&format!("Parent domain {parent} does not exist"), CREATE_USAGE),
        },
        (None, Some(target)) => match data.find(target) {
            Some(target) => data.add_alias(target, Some(name)),
            None => return ProgramRun::usage(&format!("Alias target {target} does not exist"), CREATE_USAGE),
        },
        (None, None) => {
            let index = data.add_top(Some(name), Some(("", quota.unwrap_or(0), 0)));
            let domain = &mut data.domains[index];
            options.one("pass").unwrap_or_default().clone_into(&mut domain.password);
            domain.hashed_password = false;
            domain.bandwidth_usage = 0;
            domain.bandwidth_limit = options.one("bandwidth").and_then(|b| b.parse().ok()).unwrap_or(0);
            if let Some(user) = options.one("user") {
                user.clone_into(&mut domain.user);
            }
            index
        }
    };
    let domain = &mut data.domains[index];
    options.one("desc").unwrap_or_default().clone_into(&mut domain.description);
    if let Some(plan) = options.one("plan") {
        plan.clone_into(&mut domain.plan_name);
    }
    let user = domain.user.clone();
    let output = format!(
        "Beginning server creation ..\n\n{}All done!\n",
        steps(
            "",
            &[
                format!("Creating administration group {user} .."),
                format!("Creating administration user {user} .."),
                "Creating home directory ..".to_owned(),
                "Adding new DNS zone ..".to_owned(),
                "Adding new virtual website ..".to_owned(),
                "Saving server details ..".to_owned(),
                "Re-starting Webmin ..".to_owned(),
            ]
        )
    );
    ProgramRun::ok(output)
}

fn delete_domain(args: &[String], data: &mut Dataset) -> ProgramRun {
    let spec = OptionSpec { values: &["domain", "user"], optional_values: &[], flags: &["only", "preserve-remote"] };
    let options = match parse(args, &spec) {
        Ok(options) => options,
        Err(message) => return ProgramRun::usage(&message, DELETE_USAGE),
    };
    if options.all("domain").is_empty() && options.all("user").is_empty() {
        return ProgramRun::usage("No domains or users specified", DELETE_USAGE);
    }
    let mut output = String::new();
    for name in options.all("domain") {
        let Some(index) = data.find(name) else {
            return ProgramRun::usage(&format!("Virtual server {name} does not exist"), DELETE_USAGE);
        };
        let deleted = data.domains[index].name.clone();
        data.domains.retain(|d| {
            d.name != deleted && d.parent.as_deref() != Some(&deleted) && d.alias_of.as_deref() != Some(&deleted)
        });
        let _ = write!(
            output,
            "Deleting virtual server {deleted} ..\n{}.. deleted\n\n",
            steps(
                "    ",
                &[
                    "Deleting Webmin user ..".to_owned(),
                    "Deleting home directory ..".to_owned(),
                    format!("Deleting server details for {deleted} ..")
                ]
            )
        );
    }
    ProgramRun::ok(output)
}

fn disable_domain(args: &[String], data: &mut Dataset) -> ProgramRun {
    let spec =
        OptionSpec { values: &["domain", "why", "schedule", "feature"], optional_values: &[], flags: &["subservers"] };
    let options = match parse(args, &spec) {
        Ok(options) => options,
        Err(message) => return ProgramRun::usage(&message, DISABLE_USAGE),
    };
    let Some(name) = options.one("domain") else { return ProgramRun::usage("No domain specified", DISABLE_USAGE) };
    let Some(index) = data.find(name) else {
        return ProgramRun::usage(&format!("Virtual server {name} does not exist"), DISABLE_USAGE);
    };
    let now = data.now();
    let domain = &mut data.domains[index];
    if domain.disabled.is_some() {
        // This program's usage() prints a single newline after the message.
        return ProgramRun {
            output: format!("Virtual server {} is already disabled\n{DISABLE_USAGE}", domain.name),
            exit_status: 256,
        };
    }
    domain.disabled = Some(options.one("why").map_or_else(|| "Manually".to_owned(), |why| format!("Manually ({why})")));
    domain.disabled_at = Some(now);
    let output = format!(
        "Disabling virtual server {} ..\n\n{}All done!\n",
        domain.name,
        steps(
            "",
            &[
                "Locking administration user's password ..".to_owned(),
                "Replacing website with error page ..".to_owned()
            ]
        )
    );
    ProgramRun::ok(output)
}

fn enable_domain(args: &[String], data: &mut Dataset) -> ProgramRun {
    let spec = OptionSpec { values: &["domain"], optional_values: &[], flags: &["subservers"] };
    let options = match parse(args, &spec) {
        Ok(options) => options,
        Err(message) => return ProgramRun::usage(&message, ENABLE_USAGE),
    };
    let Some(name) = options.one("domain") else { return ProgramRun::usage("No domain specified", ENABLE_USAGE) };
    let Some(index) = data.find(name) else {
        return ProgramRun::usage(&format!("Virtual server {name} does not exist"), ENABLE_USAGE);
    };
    let domain = &mut data.domains[index];
    if domain.disabled.is_none() {
        return ProgramRun {
            output: format!("Virtual server {} is not disabled\n{ENABLE_USAGE}", domain.name),
            exit_status: 256,
        };
    }
    domain.disabled = None;
    domain.disabled_at = None;
    let output = format!(
        "Enabling virtual server {} ..\n\n{}All done!\n",
        domain.name,
        steps(
            "",
            &[
                "Restoring administration user's password ..".to_owned(),
                "Removing error page from website ..".to_owned()
            ]
        )
    );
    ProgramRun::ok(output)
}

fn modify_domain(args: &[String], data: &mut Dataset) -> ProgramRun {
    let spec = OptionSpec {
        values: &["domain", "pass", "desc", "email", "quota", "uquota", "bw", "plan", "newdomain", "user", "template"],
        optional_values: &[],
        flags: &["apply-plan", "bw-disable", "bw-no-disable", "apply-quotas", "protected", "unprotected"],
    };
    let options = match parse(args, &spec) {
        Ok(options) => options,
        Err(message) => return ProgramRun::usage(&message, MODIFY_USAGE),
    };
    let Some(name) = options.one("domain") else { return ProgramRun::usage("No domain specified", MODIFY_USAGE) };
    let Some(index) = data.find(name) else {
        return ProgramRun::usage(&format!("Virtual server {name} does not exist."), MODIFY_USAGE);
    };
    let (Ok(quota), Ok(_)) = (check_quota(options.one("quota")), check_quota(options.one("uquota"))) else {
        return ProgramRun::usage("Quota must be a number of blocks", MODIFY_USAGE);
    };
    let bandwidth = match options.one("bw") {
        None => None,
        Some("NONE") => Some(0),
        Some(text) => match text.parse::<u64>() {
            Ok(bytes) => Some(bytes),
            Err(_) => return ProgramRun::usage("Bandwidth limit must be a number of bytes", MODIFY_USAGE),
        },
    };
    let domain = &mut data.domains[index];
    let mut changes = Vec::new();
    if let Some(quota) = quota {
        domain.quota_blocks = quota;
        changes.push("Changing disk quota ..".to_owned());
    }
    if let Some(bandwidth) = bandwidth {
        domain.bandwidth_limit = bandwidth;
        changes.push("Changing bandwidth limit ..".to_owned());
    }
    if let Some(pass) = options.one("pass") {
        pass.clone_into(&mut domain.password);
        changes.push("Changing password ..".to_owned());
    }
    if let Some(plan) = options.one("plan") {
        plan.clone_into(&mut domain.plan_name);
        changes.push("Applying plan ..".to_owned());
    }
    changes.push("Saving server details ..".to_owned());
    ProgramRun::ok(format!(
        "Updating virtual server {} ..\n\n{}.. done\n\nAll done\n",
        domain.name,
        steps("    ", &changes)
    ))
}

fn backup_domain(args: &[String], data: &mut Dataset) -> ProgramRun {
    let spec = OptionSpec {
        values: &[
            "dest",
            "domain",
            "user",
            "plan",
            "reseller",
            "feature",
            "except-feature",
            "compression",
            "purge",
            "parent",
        ],
        optional_values: &[],
        flags: &[
            "all-domains",
            "all-features",
            "newformat",
            "onebyone",
            "ignore-errors",
            "strftime",
            "differential",
            "incremental",
            "kill-running",
            "wait-running",
            "test",
        ],
    };
    let options = match parse(args, &spec) {
        Ok(options) => options,
        Err(message) => return ProgramRun::usage(&message, BACKUP_USAGE),
    };
    if options.all("dest").is_empty() {
        return ProgramRun::usage("No destinations specified", BACKUP_USAGE);
    }
    if options.all("domain").is_empty() && !options.flag("all-domains") {
        return ProgramRun::usage("No domains specified", BACKUP_USAGE);
    }
    if !options.flag("all-features") && options.all("feature").is_empty() {
        return ProgramRun::usage("No features specified", BACKUP_USAGE);
    }
    let mut total = 0u64;
    let mut lines = Vec::new();
    for name in options.all("domain") {
        let Some(index) = data.find(name) else {
            return ProgramRun::usage(&format!("Virtual server {name} does not exist"), BACKUP_USAGE);
        };
        total +=
            data.domains[index].used_blocks * BLOCK + data.domains[index].database_bytes.iter().sum::<u64>() + 4096;
        lines.push(format!("Backing up virtual server {name} .."));
    }
    lines.push("Creating TAR file of home directory ..".to_owned());
    ProgramRun::ok(format!(
        "Starting backup..\n{}Backup completed successfully. Final size was {}\n\n",
        steps("", &lines),
        nice_size(total)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn unknown_and_stray_arguments_are_usage_errors() {
        let mut data = Dataset::seeded(1, 10, 1_763_884_800);
        let run = run("list-domains", &args(&["--multiline", "True"]), &mut data, "h");
        assert_eq!(run.exit_status, 256);
        assert!(run.output.starts_with("Unknown parameter True\n"));
    }

    #[test]
    fn suspending_twice_reports_already_disabled() {
        let mut data = Dataset::seeded(1, 10, 1_763_884_800);
        assert_eq!(run("disable-domain", &args(&["--domain", "example.com"]), &mut data, "h").exit_status, 0);
        let again = run("disable-domain", &args(&["--domain", "example.com"]), &mut data, "h");
        assert!(again.output.starts_with("Virtual server example.com is already disabled\n"));
    }

    #[test]
    fn create_then_delete() {
        let mut data = Dataset::seeded(1, 10, 1_763_884_800);
        let created = run(
            "create-domain",
            &args(&["--domain", "new.example", "--pass", "x", "--default-features"]),
            &mut data,
            "h",
        );
        assert_eq!(created.exit_status, 0, "{}", created.output);
        let again = run(
            "create-domain",
            &args(&["--domain", "new.example", "--pass", "x", "--default-features"]),
            &mut data,
            "h",
        );
        assert!(again.output.starts_with("You are already hosting this domain"));
        assert_eq!(run("delete-domain", &args(&["--domain", "new.example"]), &mut data, "h").exit_status, 0);
        assert!(data.find("new.example").is_none());
    }
}
