//! The simulated server's domains and the text Virtualmin's programs print
//! about them, ported from `virtualmin-samples/gen_samples.py`: top-level
//! servers, sub-servers, aliases, disabled ones, unlimited quotas, usage from
//! bytes to TiB, master-administrator output (plaintext passwords included,
//! as the real server prints them).

use std::fmt::Write as _;

/// Quota block size on Linux.
pub(crate) const BLOCK: u64 = 1024;
/// The shared address every domain reports.
const SHARED_IP: &str = "203.0.113.10";
const WORDS: [&str; 40] = [
    "alpha", "atlas", "aurora", "bistro", "blue", "cedar", "cobalt", "coral", "delta", "ember", "falcon", "fern",
    "garnet", "harbor", "indigo", "juniper", "kestrel", "lumen", "maple", "meadow", "nimbus", "north", "oak", "onyx",
    "orchid", "pixel", "quartz", "river", "saffron", "sierra", "solar", "summit", "tango", "terra", "umber", "vector",
    "willow", "zephyr", "alder", "birch",
];
const TLDS: [&str; 8] = ["com", "net", "org", "ro", "eu", "io", "co.uk", "de"];
const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// What kind of virtual server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Top,
    Sub,
    Alias,
}

/// One simulated virtual server.
#[derive(Clone, Debug)]
pub(crate) struct SimDomain {
    pub(crate) kind: Kind,
    pub(crate) name: String,
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) user: String,
    pub(crate) uid: u32,
    pub(crate) password: String,
    pub(crate) hashed_password: bool,
    pub(crate) features: Vec<String>,
    pub(crate) database_bytes: Vec<u64>,
    /// Quota in blocks; 0 is unlimited.
    pub(crate) quota_blocks: u64,
    pub(crate) used_blocks: u64,
    /// Bandwidth limit in bytes; 0 is unlimited.
    pub(crate) bandwidth_limit: u64,
    pub(crate) bandwidth_usage: u64,
    pub(crate) disabled: Option<String>,
    pub(crate) disabled_at: Option<u64>,
    pub(crate) parent: Option<String>,
    pub(crate) alias_of: Option<String>,
    pub(crate) plan_id: String,
    pub(crate) plan_name: String,
    pub(crate) description: String,
    pub(crate) php: &'static str,
    pub(crate) last_login: Option<u64>,
}

/// The domains of the simulated server, in creation order.
#[derive(Debug)]
pub(crate) struct Dataset {
    pub(crate) domains: Vec<SimDomain>,
    rng: fastrand::Rng,
    next_pid: u64,
    next_uid: u32,
    now: u64,
}

impl Dataset {
    /// The four domains of the samples plus random ones up to `count`.
    pub(crate) fn seeded(seed: u64, count: usize, now: u64) -> Self {
        let mut dataset =
            Self { domains: Vec::new(), rng: fastrand::Rng::with_seed(seed), next_pid: 4000, next_uid: 1000, now };
        let example = dataset.add_top(Some("example.com"), Some(("Example Ltd", 2_147_483_648, 1_649_267_441)));
        dataset.domains[example].database_bytes = vec![52_428_800, 16_384];
        dataset.domains[example].bandwidth_usage = 3 * (1 << 40) + 7;
        dataset.domains[example].bandwidth_limit = 0;
        dataset.domains[example].created = 1_578_225_600;
        dataset.add_sub(example, Some("shop.example.com"));
        dataset.add_alias(example, Some("example.net"));
        let archive = dataset.add_top(Some("archive-example.org"), Some(("Archive Co", 0, 0)));
        let archive_domain = &mut dataset.domains[archive];
        archive_domain.disabled = Some("Manually (unpaid invoice)".to_owned());
        archive_domain.disabled_at = Some(now - 3 * 86_400);
        archive_domain.bandwidth_limit = 0;
        archive_domain.bandwidth_usage = 734;
        archive_domain.database_bytes.clear();
        archive_domain.created = 1_609_502_400;
        while dataset.domains.len() < count {
            let roll = dataset.rng.f64();
            let tops: Vec<usize> =
                (0..dataset.domains.len()).filter(|i| dataset.domains[*i].kind == Kind::Top).collect();
            if roll < 0.45 {
                let index = dataset.add_top(None, None);
                if dataset.rng.f64() < 0.04 {
                    dataset.domains[index].disabled = Some("Manually (abuse report)".to_owned());
                    dataset.domains[index].disabled_at = Some(now - 86_400);
                }
            } else if roll < 0.75 {
                let parent = tops[dataset.rng.usize(..tops.len())];
                dataset.add_sub(parent, None);
            } else {
                let targets: Vec<usize> =
                    (0..dataset.domains.len()).filter(|i| dataset.domains[*i].kind != Kind::Alias).collect();
                let target = targets[dataset.rng.usize(..targets.len())];
                dataset.add_alias(target, None);
            }
        }
        dataset
    }

    fn new_id(&mut self, created: u64) -> String {
        self.next_pid += self.rng.u64(1..98);
        format!("{created}{}0", self.next_pid)
    }

    fn unique_name(&mut self, wanted: Option<&str>) -> String {
        if let Some(name) = wanted
            && self.find(name).is_none()
        {
            return name.to_owned();
        }
        loop {
            let name = format!(
                "{}-{}.{}",
                WORDS[self.rng.usize(..WORDS.len())],
                WORDS[self.rng.usize(..WORDS.len())],
                TLDS[self.rng.usize(..TLDS.len())]
            );
            if self.find(&name).is_none() {
                return name;
            }
        }
    }

    pub(crate) fn find(&self, name: &str) -> Option<usize> {
        self.domains.iter().position(|d| d.name.eq_ignore_ascii_case(name))
    }

    /// Adds a top-level server; `fixed` = (owner, quota blocks, used blocks).
    pub(crate) fn add_top(&mut self, name: Option<&str>, fixed: Option<(&str, u64, u64)>) -> usize {
        let name = self.unique_name(name);
        let base: String =
            name.split('.').next().unwrap_or_default().chars().filter(char::is_ascii_alphanumeric).take(16).collect();
        let mut user = base.clone();
        while self.domains.iter().any(|d| d.user == user) {
            user = format!("{}{}", &base[..base.len().min(12)], self.rng.u32(2..1000));
        }
        self.next_uid += 1;
        let created = self.rng.u64(1_546_300_800..self.now - 86_400);
        let quota_choices = [0, 1_048_576, 2_097_152, 5_242_880, 10_485_760, 52_428_800, 1_073_741_824];
        let quota = quota_choices[self.rng.usize(..quota_choices.len())];
        let cap = if quota == 0 { [2_097_152, 52_428_800, 2_147_483_648][self.rng.usize(..3)] } else { quota };
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        // plausible data only
        let used_blocks = (cap as f64 * self.rng.f64().powi(2)) as u64;
        let database_count = [0, 0, 0, 1, 2][self.rng.usize(..5)];
        let database_bytes = (0..database_count)
            .map(|_| [16_384, 49_152, 1_048_576, self.rng.u64(100_000..9 << 30)][self.rng.usize(..4)])
            .collect();
        let bandwidth_limit = [0, 10 << 30, 100 << 30, 1 << 40][self.rng.usize(..4)];
        let bandwidth_usage = match self.rng.usize(..4) {
            0 => 0,
            1 => self.rng.u64(1..1024),
            2 => self.rng.u64(1 << 20..1 << 34),
            _ => self.rng.u64(1 << 30..3 << 40),
        };
        let web = self.rng.f64() < 0.7 || fixed.is_some();
        let (owner, quota, used_blocks) = if let Some((owner, quota, used_blocks)) = fixed {
            (owner.to_owned(), quota, used_blocks)
        } else {
            let mut owner = name.split('.').next().unwrap_or_default().to_owned();
            if let Some(first) = owner.get_mut(..1) {
                first.make_ascii_uppercase();
            }
            (format!("{owner} Ltd"), quota, used_blocks)
        };
        let mut features: Vec<String> = ["unix", "dir", "dns", "mail"].map(String::from).to_vec();
        if web {
            features.extend(["web", "ssl", "logrotate"].map(String::from));
        }
        let domain = SimDomain {
            kind: Kind::Top,
            id: self.new_id(created),
            name,
            created,
            uid: self.next_uid,
            password: format!("sample-{:06}", self.rng.u32(0..1_000_000)),
            hashed_password: self.rng.f64() < 0.5,
            features,
            database_bytes,
            quota_blocks: quota,
            used_blocks,
            bandwidth_limit,
            bandwidth_usage,
            disabled: None,
            disabled_at: None,
            parent: None,
            alias_of: None,
            plan_id: "0".to_owned(),
            plan_name: "Default Plan".to_owned(),
            description: owner,
            php: ["fpm", "fpm", "fcgid", "cgi"][self.rng.usize(..4)],
            last_login: (self.rng.f64() < 0.6).then(|| created + self.rng.u64(600..86_400 * 30)),
            user,
        };
        let mut domain = domain;
        if !domain.database_bytes.is_empty() {
            domain.features.push("mysql".to_owned());
        }
        domain.features.extend(["spam", "virus", "webmin"].map(String::from));
        self.domains.push(domain);
        self.domains.len() - 1
    }

    pub(crate) fn add_sub(&mut self, parent: usize, name: Option<&str>) -> usize {
        let parent_domain = self.domains[parent].clone();
        let wanted = name.map_or_else(
            || format!("{}.{}", ["shop", "blog", "dev", "mail2", "app"][self.rng.usize(..5)], parent_domain.name),
            str::to_owned,
        );
        let name = self.unique_name(Some(&wanted));
        let created = (self.now - 3600).min(parent_domain.created + self.rng.u64(3600..86_400 * 400));
        let mut features: Vec<String> = ["dir", "dns", "mail", "web"].map(String::from).to_vec();
        features.push(if self.rng.f64() < 0.7 { "ssl" } else { "logrotate" }.to_owned());
        let domain = SimDomain {
            kind: Kind::Sub,
            id: self.new_id(created),
            name,
            created,
            features,
            database_bytes: Vec::new(),
            parent: Some(parent_domain.name.clone()),
            description: String::new(),
            ..parent_domain
        };
        self.domains.push(domain);
        self.domains.len() - 1
    }

    pub(crate) fn add_alias(&mut self, target: usize, name: Option<&str>) -> usize {
        let target_domain = self.domains[target].clone();
        let name = self.unique_name(name);
        let created = (self.now - 3600).min(target_domain.created + self.rng.u64(3600..86_400 * 400));
        let top = target_domain.parent.clone().unwrap_or_else(|| target_domain.name.clone());
        let domain = SimDomain {
            kind: Kind::Alias,
            id: self.new_id(created),
            name,
            created,
            features: ["dir", "dns", "mail", "web"].map(String::from).to_vec(),
            database_bytes: Vec::new(),
            parent: Some(top),
            alias_of: Some(target_domain.name.clone()),
            description: String::new(),
            ..target_domain
        };
        self.domains.push(domain);
        self.domains.len() - 1
    }

    /// Indexes in list-domains order: owner user name, then creation time.
    pub(crate) fn sorted(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.domains.len()).collect();
        order.sort_by(|a, b| {
            let (a, b) = (&self.domains[*a], &self.domains[*b]);
            (a.user.as_str(), a.created).cmp(&(b.user.as_str(), b.created))
        });
        order
    }

    /// Day counts of one domain's traffic: deterministic per domain and day.
    pub(crate) fn traffic(domain: &str, day: u64) -> Vec<(&'static str, u64)> {
        let mut rng = fastrand::Rng::with_seed(
            day ^ domain.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))),
        );
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        // plausible data only
        let mut amount = |scale: f64| (rng.f64().powi(3) * scale) as u64;
        vec![("mail", amount(4e7)), ("web", amount(5e8))]
    }

    pub(crate) fn now(&self) -> u64 {
        self.now
    }
}

/// Webmin's `nice_size` (≥ 1.950 labels): base 1024, two truncated decimals.
#[allow(clippy::cast_precision_loss)] // Perl's float arithmetic, on purpose
pub(crate) fn nice_size(bytes: u64) -> String {
    const LABELS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    if value >= 1024.0 {
        loop {
            value /= 1024.0;
            unit += 1;
            if !(value >= 1024.0 && unit < 5) {
                break;
            }
        }
    }
    let truncated = (value * 100.0).trunc() / 100.0;
    let text = format!("{truncated:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} {}", LABELS[unit])
}

/// Civil date of a day number since 1970-01-01 (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Webmin's built-in `make_date`: `14/Mar/2025 21:26`, or the date alone.
pub(crate) fn make_date(epoch: u64, date_only: bool) -> String {
    let days = i64::try_from(epoch / 86_400).unwrap_or_default();
    let (year, month, day) = civil_from_days(days);
    let mut text = format!("{day:02}/{}/{year:04}", MONTHS[(month - 1) as usize]);
    if !date_only {
        let seconds = epoch % 86_400;
        let _ = write!(text, " {:02}:{:02}", seconds / 3600, seconds % 3600 / 60);
    }
    text
}

fn quota_text(blocks: u64) -> String {
    if blocks == 0 { "Unlimited".to_owned() } else { nice_size(blocks * BLOCK) }
}

fn or_unlimited(value: u64) -> String {
    if value == 0 { "Unlimited".to_owned() } else { value.to_string() }
}

/// The `    Label: value` lines list-domains `--multiline` prints for one domain.
#[allow(clippy::too_many_lines)] // one line per printed field, in print order, like the Perl it mirrors
pub(crate) fn domain_fields(dataset: &Dataset, domain: &SimDomain, full: bool) -> Vec<(&'static str, String)> {
    let mut fields: Vec<(&'static str, String)> = Vec::with_capacity(96);
    let mut add = |label: &'static str, value: String| fields.push((label, value));
    let top = domain.kind == Kind::Top;
    let home =
        if top { format!("/home/{}", domain.user) } else { format!("/home/{}/domains/{}", domain.user, domain.name) };
    let web = domain.features.iter().any(|f| f == "web");
    add("ID", domain.id.clone());
    add("File", format!("/etc/webmin/virtual-server/domains/{}", domain.id));
    add(
        "Type",
        match domain.kind {
            Kind::Top => "Top-level server",
            Kind::Sub => "Sub-server",
            Kind::Alias => "Alias",
        }
        .to_owned(),
    );
    if web {
        add("URL", format!("http://{}/", domain.name));
    }
    match domain.kind {
        Kind::Alias => {
            add("Real domain", domain.alias_of.clone().unwrap_or_default());
            add("Mail aliases mode", "Catchall".to_owned());
        }
        Kind::Sub => add("Parent domain", domain.parent.clone().unwrap_or_default()),
        Kind::Top => {}
    }
    add("Description", domain.description.clone());
    add("Template ID", if top { "0" } else { "1" }.to_owned());
    add("Template", if top { "Default Settings" } else { "Default Settings for Sub-Servers" }.to_owned());
    add("Plan ID", domain.plan_id.clone());
    add("Plan", domain.plan_name.clone());
    add("Username", domain.user.clone());
    add("User ID", domain.uid.to_string());
    add("Group name", domain.user.clone());
    add("Group ID", domain.uid.to_string());
    add("Mailbox username prefix", domain.user.clone());
    add("Password storage", if domain.hashed_password { "Hashed" } else { "Plain text" }.to_owned());
    if domain.hashed_password {
        add("Hashed password", format!("$6$sample${}", &domain.id[domain.id.len().saturating_sub(12)..]));
    } else {
        add("Password", domain.password.clone());
    }
    if domain.features.iter().any(|f| f == "mysql") {
        add("Username for mysql", domain.user.clone());
        add("Password for mysql", domain.password.clone());
        add("Hostname for mysql", "localhost".to_owned());
        add("Port for mysql", "3306".to_owned());
    }
    add("Home directory", home.clone());
    if web {
        let web_name = domain.alias_of.as_deref().unwrap_or(&domain.name);
        add("HTML directory", format!("{home}/public_html"));
        add("CGI directory", format!("{home}/cgi-bin"));
        add("Access log", format!("/var/log/virtualmin/{web_name}_access_log"));
        add("Error log", format!("/var/log/virtualmin/{web_name}_error_log"));
    }
    add("Contact email", format!("admin@{}", domain.name));
    add("Contact address", format!("admin@{}", domain.name));
    add("Created on", make_date(domain.created, false));
    add("Created Unix time", domain.created.to_string());
    add("Created by", "root".to_owned());
    if let Some(reason) = &domain.disabled {
        add("Disabled", reason.clone());
        if let Some(at) = domain.disabled_at {
            add("Disabled at", make_date(at, false));
        }
    }
    add("IP address", format!("{SHARED_IP} (Shared)"));
    add("Features", domain.features.join(" "));
    add("Plugins", String::new());
    if top {
        add("Server quota", quota_text(domain.quota_blocks));
        add("Server block quota", or_unlimited(domain.quota_blocks));
        if full {
            add("Server quota used", nice_size(domain.used_blocks * BLOCK));
            add("Server block quota used", domain.used_blocks.to_string());
            add("Server byte quota used", (domain.used_blocks * BLOCK).to_string());
        }
        add("User quota", quota_text(domain.quota_blocks));
        add("User block quota", or_unlimited(domain.quota_blocks));
    }
    if !domain.database_bytes.is_empty() && full {
        let total: u64 = domain.database_bytes.iter().sum();
        add("Databases count", domain.database_bytes.len().to_string());
        add("Databases size", nice_size(total));
        add("Databases byte size", total.to_string());
    }
    if top {
        add(
            "Bandwidth limit",
            if domain.bandwidth_limit == 0 { "Unlimited".to_owned() } else { nice_size(domain.bandwidth_limit) },
        );
        add("Bandwidth byte limit", or_unlimited(domain.bandwidth_limit));
        add("Bandwidth start", make_date((dataset.now() / 86_400 - 22) * 86_400, true));
        add("Bandwidth usage", nice_size(domain.bandwidth_usage));
        add("Bandwidth byte usage", domain.bandwidth_usage.to_string());
        add("Disable if over bandwidth limit", "Yes".to_owned());
    }
    if domain.kind != Kind::Alias && web {
        add("PHP execution mode", domain.php.to_owned());
        if full {
            add("Possible PHP execution modes", "cgi fcgid fpm".to_owned());
            add("PHP version", "8.2".to_owned());
        }
    }
    if domain.features.iter().any(|f| f == "ssl") {
        add("SSL cert file", format!("{home}/ssl.cert"));
        let expiry =
            domain.created + 86_400 * 90 * (1 + (dataset.now().saturating_sub(domain.created)) / (86_400 * 90));
        add("SSL cert expiry", make_date(expiry, false));
        add("SSL cert expiry time", expiry.to_string());
    }
    if top {
        add("Maximum sub-servers", "Unlimited".to_owned());
        add("Maximum mailboxes", "Unlimited".to_owned());
        add("Allowed features", domain.features.join(" "));
    }
    match domain.last_login {
        Some(at) => {
            add("Last login", make_date(at, false));
            add("Last login time", at.to_string());
        }
        None => add("Last login", "Never".to_owned()),
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_size_matches_the_reference_table() {
        for (bytes, text) in [
            (0, "0 bytes"),
            (734, "734 bytes"),
            (1024, "1 KiB"),
            (1536, "1.5 KiB"),
            (1_048_575, "1023.99 KiB"),
            (123_456_789, "117.73 MiB"),
            (1_288_490_188, "1.19 GiB"),
            (1_099_511_627_776, "1 TiB"),
            (1_152_921_504_606_846_976, "1024 PiB"),
        ] {
            assert_eq!(nice_size(bytes), text);
        }
    }

    #[test]
    fn dates_are_webmin_style() {
        assert_eq!(make_date(1_609_502_400, false), "01/Jan/2021 12:00");
        assert_eq!(make_date(1_763_884_800, true), "23/Nov/2025");
    }

    #[test]
    fn seeded_dataset_holds_the_sample_domains() {
        let dataset = Dataset::seeded(7, 40, 1_763_884_800);
        assert_eq!(dataset.domains.len(), 40);
        for name in ["example.com", "shop.example.com", "example.net", "archive-example.org"] {
            assert!(dataset.find(name).is_some(), "{name}");
        }
        assert_eq!(Dataset::seeded(7, 40, 1_763_884_800).domains[20].name, dataset.domains[20].name);
    }
}
