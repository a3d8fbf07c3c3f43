//! Compiles `bpf/verdict.bpf.c` into an eBPF object with clang; `src/lib.rs` embeds it.
//!
//! Needs clang (any version with the BPF target) and the libbpf headers (libbpf-dev).
//! `CLANG` overrides the compiler. When `llvm-strip` is found the DWARF sections (~600 KB,
//! unused by the loader) are stripped; the BTF that CO-RE and the loader need stays.

use std::env;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

const SOURCES: [&str; 2] = ["bpf/verdict.bpf.c", "bpf/vmlinux.h"];

fn main() -> ExitCode {
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed=LLVM_STRIP");

    let Some(out_dir) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        eprintln!("error: OUT_DIR is not set (build.rs must run under cargo)");
        return ExitCode::FAILURE;
    };
    let manifest_dir = env::var_os("CARGO_MANIFEST_DIR").map_or_else(PathBuf::new, PathBuf::from);
    let bpf_dir = manifest_dir.join("bpf");
    let object = out_dir.join("verdict.bpf.o");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());

    let status = Command::new(&clang)
        .args([
            "-target",
            "bpf",
            "-D__TARGET_ARCH_x86",
            "-O2",
            "-g",
            "-Wall",
            "-Werror",
        ])
        .arg("-I")
        .arg(&bpf_dir)
        .arg("-c")
        .arg(bpf_dir.join("verdict.bpf.c"))
        .arg("-o")
        .arg(&object)
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => {
            eprintln!(
                "error: `{clang} -target bpf ... bpf/verdict.bpf.c` failed ({status}). If \
                 <bpf/bpf_helpers.h> is missing: `apt-get install clang libbpf-dev` or run \
                 scripts/setup.sh"
            );
            return ExitCode::FAILURE;
        }
        Err(error) => {
            eprintln!(
                "error: cannot run `{clang}` to build the eBPF probes ({error}): \
                 `apt-get install clang libbpf-dev` or run scripts/setup.sh"
            );
            return ExitCode::FAILURE;
        }
    }

    let strip = env::var("LLVM_STRIP").unwrap_or_else(|_| "llvm-strip".to_owned());
    match Command::new(&strip).arg("-g").arg(&object).status() {
        Ok(status) if status.success() => {}
        Ok(status) => {
            println!("cargo:warning=`{strip} -g` failed ({status}); object kept with DWARF")
        }
        Err(_) => {} // Optional: the object only stays larger.
    }
    ExitCode::SUCCESS
}
