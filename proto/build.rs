//! Compiles every `.proto` under this directory with protox (no system protoc),
//! generates tonic code for each `mesh.*` package, and writes one descriptor
//! set per package (the package's files plus their imports) for reflection.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};

#[allow(clippy::disallowed_methods)] // a build script reads cargo's variables from its environment
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut proto_files = Vec::new();
    collect_protos(&proto_root.join("mesh"), &mut proto_files)?;
    proto_files.sort();
    for file in &proto_files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    println!("cargo:rerun-if-changed={}", proto_root.join("google").display());

    let file_descriptor_set = protox::compile(&proto_files, [&proto_root])?;
    std::fs::write(out_dir.join("mesh_descriptor.bin"), file_descriptor_set.encode_to_vec())?;
    write_package_descriptor_sets(&file_descriptor_set, &out_dir)?;
    write_file_descriptor_sets(&file_descriptor_set, &out_dir)?;

    tonic_prost_build::configure().extern_path(".google.rpc", "::tonic_types::pb").compile_fds(file_descriptor_set)?;
    Ok(())
}

fn collect_protos(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, found)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            found.push(path);
        }
    }
    Ok(())
}

/// Writes `<package>.bin` for each `mesh.*` package: its own files and the
/// transitive closure of their imports, so each set is self-contained.
fn write_package_descriptor_sets(file_descriptor_set: &FileDescriptorSet, out_dir: &Path) -> std::io::Result<()> {
    let files_by_name: BTreeMap<&str, &FileDescriptorProto> =
        file_descriptor_set.file.iter().map(|file| (file.name(), file)).collect();
    let packages: BTreeSet<&str> = file_descriptor_set
        .file
        .iter()
        .map(FileDescriptorProto::package)
        .filter(|package| package.starts_with("mesh."))
        .collect();

    for package in packages {
        let mut included = BTreeSet::new();
        let mut ordered = Vec::new();
        for file in file_descriptor_set.file.iter().filter(|f| f.package() == package) {
            add_with_imports(file, &files_by_name, &mut included, &mut ordered);
        }
        let package_set = FileDescriptorSet { file: ordered };
        std::fs::write(out_dir.join(format!("{package}.bin")), package_set.encode_to_vec())?;
    }
    Ok(())
}

/// Writes `<file>.bin` for each `mesh/**.proto` file (`mesh/memory/v1/profiler.proto`
/// becomes `mesh.memory.v1.profiler.proto.bin`): the file and the transitive
/// closure of its imports, for servers that serve one file of a package but
/// not the others (every server serves `MemoryIntrospection`, only the
/// profiler serves `MemoryProfiler`).
fn write_file_descriptor_sets(file_descriptor_set: &FileDescriptorSet, out_dir: &Path) -> std::io::Result<()> {
    let files_by_name: BTreeMap<&str, &FileDescriptorProto> =
        file_descriptor_set.file.iter().map(|file| (file.name(), file)).collect();
    for file in file_descriptor_set.file.iter().filter(|f| f.name().starts_with("mesh/")) {
        let mut included = BTreeSet::new();
        let mut ordered = Vec::new();
        add_with_imports(file, &files_by_name, &mut included, &mut ordered);
        let file_set = FileDescriptorSet { file: ordered };
        std::fs::write(out_dir.join(format!("{}.bin", file.name().replace('/', "."))), file_set.encode_to_vec())?;
    }
    Ok(())
}

/// Appends `file` after its imports (descriptor sets must list dependencies first).
fn add_with_imports(
    file: &FileDescriptorProto,
    files_by_name: &BTreeMap<&str, &FileDescriptorProto>,
    included: &mut BTreeSet<String>,
    ordered: &mut Vec<FileDescriptorProto>,
) {
    if !included.insert(file.name().to_owned()) {
        return;
    }
    for import in &file.dependency {
        if let Some(imported) = files_by_name.get(import.as_str()) {
            add_with_imports(imported, files_by_name, included, ordered);
        }
    }
    ordered.push(file.clone());
}
