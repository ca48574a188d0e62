//! Top frames of a heap profile: decodes the gzipped pprof that
//! `MemoryIntrospection.HeapProfile` returns (jemalloc's sampled live
//! allocations, symbolized in the profiled process) and ranks the functions
//! holding the most live bytes. Pure; knows pprof's `profile.proto`, not tonic.
//!
//! "Self" bytes go to the first frame of each stack that is not the
//! allocator itself (jemalloc, `__rust_alloc`, `RawVec` growth, ...), since
//! "`malloc` holds 300 MiB" tells an operator nothing; "total" bytes go to
//! every distinct function on the stack, once per sample.

use std::collections::{HashMap, HashSet};
use std::io::Read as _;

use flate2::read::GzDecoder;
use prost::Message as _;

/// The largest profile accepted, decompressed: profiles are sampled, so
/// anything this big is not one.
const MAX_PROFILE_BYTES: u64 = 256 * 1024 * 1024;

/// Function-name prefixes of allocator plumbing, skipped when attributing
/// "self" bytes.
const ALLOCATOR_PREFIXES: &[&str] = &[
    "_rjem_",
    "je_",
    "prof_",
    "imalloc",
    "ialloc",
    "__rust_alloc",
    "__rust_realloc",
    "__rdl_",
    "__rg_",
    "malloc",
    "calloc",
    "realloc",
    "tikv_jemallocator::",
    "<tikv_jemallocator::",
    "alloc::alloc::",
    "alloc::raw_vec::",
    "<alloc::alloc::Global",
    "alloc::vec::Vec<T,A>::reserve",
    "alloc::vec::Vec<T,A>::with_capacity",
    "alloc::boxed::Box<T>::new",
    "alloc::sync::Arc<T>::new",
    "core::ptr::",
    "mesh_kit::allocator::",
    "jemalloc_pprof::",
];

/// One function's share of the live heap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeapFrame {
    /// The demangled function name.
    pub function: String,
    /// Live bytes allocated directly by this function (allocator frames skipped).
    pub self_bytes: u64,
    /// Live bytes allocated by this function or anything it called.
    pub total_bytes: u64,
}

/// Why a profile yielded no frames.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeapProfileError {
    /// Not gzip, not a pprof `Profile`, or too large.
    #[error("the heap profile is not a readable pprof profile: {0}")]
    Unreadable(String),
    /// No `inuse_space` (or any byte-valued) sample type.
    #[error("the heap profile has no sample type measured in bytes")]
    NoByteSamples,
    /// Samples without function names: the binary has no symbols.
    #[error("the heap profile is not symbolized (the binary was stripped)")]
    NotSymbolized,
}

/// The `limit` functions holding the most live bytes, by self bytes then
/// total bytes, from a gzipped pprof profile.
pub fn top_frames(pprof_gzip: &[u8], limit: usize) -> Result<Vec<HeapFrame>, HeapProfileError> {
    let mut raw = Vec::new();
    GzDecoder::new(pprof_gzip)
        .take(MAX_PROFILE_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|e| HeapProfileError::Unreadable(e.to_string()))?;
    if raw.len() as u64 > MAX_PROFILE_BYTES {
        return Err(HeapProfileError::Unreadable(format!("larger than {MAX_PROFILE_BYTES} bytes")));
    }
    let profile = pprof::Profile::decode(raw.as_slice()).map_err(|e| HeapProfileError::Unreadable(e.to_string()))?;
    rank(&profile, limit)
}

fn rank(profile: &pprof::Profile, limit: usize) -> Result<Vec<HeapFrame>, HeapProfileError> {
    let string = |index: i64| usize::try_from(index).ok().and_then(|i| profile.string_table.get(i)).map(String::as_str);
    let value_index = profile
        .sample_type
        .iter()
        .position(|t| string(t.r#type) == Some("inuse_space"))
        .or_else(|| profile.sample_type.iter().position(|t| string(t.unit) == Some("bytes")))
        .ok_or(HeapProfileError::NoByteSamples)?;
    let functions: HashMap<u64, &str> =
        profile.function.iter().filter_map(|f| Some((f.id, string(f.name).filter(|n| !n.is_empty())?))).collect();
    let locations: HashMap<u64, &pprof::Location> = profile.location.iter().map(|l| (l.id, l)).collect();

    let mut ranked: HashMap<&str, (u64, u64)> = HashMap::new();
    let mut on_stack = HashSet::new();
    let mut any_named = false;
    for sample in &profile.sample {
        let Some(bytes) = sample.value.get(value_index).and_then(|v| u64::try_from(*v).ok()).filter(|b| *b > 0) else {
            continue;
        };
        // Innermost first: location_id[0] is the leaf, and within a
        // location line[0] the innermost inlined function.
        let names = sample
            .location_id
            .iter()
            .filter_map(|id| locations.get(id))
            .flat_map(|location| location.line.iter())
            .filter_map(|line| functions.get(&line.function_id).copied());
        on_stack.clear();
        let mut self_assigned = false;
        for name in names {
            any_named = true;
            if !self_assigned && !is_allocator(name) {
                ranked.entry(name).or_default().0 += bytes;
                self_assigned = true;
            }
            if on_stack.insert(name) {
                ranked.entry(name).or_default().1 += bytes;
            }
        }
    }
    if !any_named && !profile.sample.is_empty() {
        return Err(HeapProfileError::NotSymbolized);
    }
    let mut frames: Vec<HeapFrame> = ranked
        .into_iter()
        .filter(|(name, _)| !is_allocator(name))
        .map(|(function, (self_bytes, total_bytes))| HeapFrame {
            function: function.to_owned(),
            self_bytes,
            total_bytes,
        })
        .collect();
    frames.sort_by(|a, b| {
        b.self_bytes.cmp(&a.self_bytes).then(b.total_bytes.cmp(&a.total_bytes)).then(a.function.cmp(&b.function))
    });
    frames.truncate(limit);
    Ok(frames)
}

fn is_allocator(function: &str) -> bool {
    ALLOCATOR_PREFIXES.iter().any(|prefix| function.starts_with(prefix))
}

/// The part of pprof's `perftools.profiles.Profile` this module reads
/// (field numbers from `profile.proto`; unknown fields are skipped).
mod pprof {
    #![allow(clippy::derive_partial_eq_without_eq)] // prost derives

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub(super) sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub(super) sample: Vec<Sample>,
        #[prost(message, repeated, tag = "4")]
        pub(super) location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub(super) function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub(super) string_table: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ValueType {
        #[prost(int64, tag = "1")]
        pub(super) r#type: i64,
        #[prost(int64, tag = "2")]
        pub(super) unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub(super) location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub(super) value: Vec<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Location {
        #[prost(uint64, tag = "1")]
        pub(super) id: u64,
        #[prost(message, repeated, tag = "4")]
        pub(super) line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Line {
        #[prost(uint64, tag = "1")]
        pub(super) function_id: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Function {
        #[prost(uint64, tag = "1")]
        pub(super) id: u64,
        #[prost(int64, tag = "2")]
        pub(super) name: i64,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use flate2::Compression;
    use flate2::write::GzEncoder;
    use prost::Message as _;

    use super::pprof::{Function, Line, Location, Profile, Sample, ValueType};
    use super::*;

    /// A profile whose stacks are lists of function names, innermost first.
    fn profile(stacks: &[(&[&str], i64)]) -> Vec<u8> {
        let mut strings = vec![String::new(), "inuse_space".to_owned(), "bytes".to_owned()];
        let mut functions: Vec<Function> = Vec::new();
        let mut locations: Vec<Location> = Vec::new();
        let mut samples = Vec::new();
        for (stack, bytes) in stacks {
            let mut location_id = Vec::new();
            for name in *stack {
                let known = functions.iter().find(|f| strings[usize::try_from(f.name).unwrap()] == *name);
                let function_id = if let Some(function) = known {
                    function.id
                } else {
                    strings.push((*name).to_owned());
                    let id = functions.len() as u64 + 1;
                    functions.push(Function { id, name: i64::try_from(strings.len() - 1).unwrap() });
                    id
                };
                let id = locations.len() as u64 + 1;
                locations.push(Location { id, line: vec![Line { function_id }] });
                location_id.push(id);
            }
            samples.push(Sample { location_id, value: vec![*bytes] });
        }
        let profile = Profile {
            sample_type: vec![ValueType { r#type: 1, unit: 2 }],
            sample: samples,
            location: locations,
            function: functions,
            string_table: strings,
        };
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&profile.encode_to_vec()).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn self_bytes_skip_the_allocator_and_totals_count_each_function_once_per_stack() {
        let gz = profile(&[
            (
                &["_rjem_malloc", "alloc::raw_vec::finish_grow", "cache::store::insert", "cache::grpc::set", "main"],
                3000,
            ),
            (&["_rjem_malloc", "vpnusers::store::load", "main"], 1000),
            // Recursion: `walk` appears twice but counts once in its total.
            (&["_rjem_malloc", "tree::walk", "tree::walk", "main"], 500),
        ]);
        let frames = top_frames(&gz, 10).unwrap();
        let get = |name: &str| frames.iter().find(|f| f.function == name).cloned().unwrap();
        assert_eq!(
            frames[0],
            HeapFrame { function: "cache::store::insert".into(), self_bytes: 3000, total_bytes: 3000 }
        );
        assert_eq!(get("vpnusers::store::load").self_bytes, 1000);
        assert_eq!(get("tree::walk"), HeapFrame { function: "tree::walk".into(), self_bytes: 500, total_bytes: 500 });
        assert_eq!(get("main"), HeapFrame { function: "main".into(), self_bytes: 0, total_bytes: 4500 });
        assert!(frames.iter().all(|f| !f.function.starts_with("_rjem_") && !f.function.starts_with("alloc::")));
    }

    #[test]
    fn the_limit_keeps_the_largest() {
        let gz = profile(&[(&["a"], 1), (&["b"], 3), (&["c"], 2)]);
        let names: Vec<String> = top_frames(&gz, 2).unwrap().into_iter().map(|f| f.function).collect();
        assert_eq!(names, ["b", "c"]);
    }

    #[test]
    fn garbage_and_unsymbolized_profiles_are_refused() {
        assert!(matches!(top_frames(b"not gzip", 5), Err(HeapProfileError::Unreadable(_))));
        let unsymbolized = Profile {
            sample_type: vec![ValueType { r#type: 1, unit: 2 }],
            sample: vec![Sample { location_id: vec![1], value: vec![64] }],
            location: vec![Location { id: 1, line: vec![] }],
            function: vec![],
            string_table: vec![String::new(), "inuse_space".into(), "bytes".into()],
        };
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&unsymbolized.encode_to_vec()).unwrap();
        assert_eq!(top_frames(&gz.finish().unwrap(), 5), Err(HeapProfileError::NotSymbolized));
    }
}
