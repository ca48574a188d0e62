//! The process's own memory use, read from `/proc/self`, for health
//! reports and the memory profiler.

/// Memory use of this process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Resident set size: pages in RAM, in bytes.
    pub resident_bytes: u64,
    /// Virtual address space reserved, in bytes.
    pub virtual_bytes: u64,
}

impl MemoryStats {
    /// Reads `/proc/self/statm`; `None` where it does not exist.
    #[must_use]
    pub fn current() -> Option<Self> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        parse_statm(&statm, page_size_bytes())
    }
}

/// Linux's page size on every platform the mesh ships for; `statm` counts pages.
const fn page_size_bytes() -> u64 {
    4096
}

fn parse_statm(statm: &str, page_size_bytes: u64) -> Option<MemoryStats> {
    let mut fields = statm.split_ascii_whitespace().map(str::parse::<u64>);
    let virtual_pages = fields.next()?.ok()?;
    let resident_pages = fields.next()?.ok()?;
    Some(MemoryStats {
        resident_bytes: resident_pages * page_size_bytes,
        virtual_bytes: virtual_pages * page_size_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statm_is_parsed_in_pages() {
        assert_eq!(
            parse_statm("100 25 3 1 0 20 0\n", 4096),
            Some(MemoryStats { resident_bytes: 25 * 4096, virtual_bytes: 100 * 4096 })
        );
        assert_eq!(parse_statm("garbage", 4096), None);
    }

    #[test]
    fn this_process_has_resident_memory() {
        let stats = MemoryStats::current().expect("tests run on linux");
        assert!(stats.resident_bytes > 0 && stats.virtual_bytes >= stats.resident_bytes);
    }
}
