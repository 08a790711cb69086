//! Generates `include/tribe.h` from `src/ffi` with cbindgen (pinned in
//! Cargo.toml), and writes `tribe.pc` (pkg-config) next to the built
//! libraries, so `cc app.c $(pkg-config --cflags --libs tribe)` works with
//! `PKG_CONFIG_PATH=target/release`.

use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=build.rs");

    let config =
        cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml is valid");
    let header = root.join("include").join("tribe.h");
    // Only the C ABI module: the rest of the crate has no C items.
    let generated = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/ffi/mod.rs"))
        .generate();
    match generated {
        Ok(bindings) => {
            let mut text = Vec::new();
            bindings.write(&mut text);
            // cbindgen closes its `extern "C"` guard with `//` comments,
            // which C89 does not have (gnu89 -pedantic refuses them even
            // where the preprocessor skips them).
            let text = String::from_utf8(text)
                .expect("cbindgen writes UTF-8")
                .replace("// __cplusplus", "/* __cplusplus */")
                .replace("// extern \"C\"", "/* extern \"C\" */");
            // Written only when it changed, so that nothing rebuilds for it.
            if std::fs::read_to_string(&header).ok().as_deref() != Some(text.as_str()) {
                std::fs::write(&header, text).expect("include/tribe.h is writable");
            }
        }
        // A parse error must not hide behind a stale header.
        Err(e) => panic!("cbindgen could not generate include/tribe.h: {e}"),
    }

    // The shared library carries a soname with the ABI version.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libtribe.so.1");
    if let Some(profile_dir) = profile_dir() {
        write_pkg_config(&root, &profile_dir);
        // The soname's file: a link to the library cargo is about to write.
        let link = profile_dir.join("libtribe.so.1");
        if std::fs::symlink_metadata(&link).is_err() {
            let _ = std::os::unix::fs::symlink("libtribe.so", &link);
        }
    }
}

/// `target/<profile>`: three levels above this build script's OUT_DIR.
fn profile_dir() -> Option<PathBuf> {
    let out = PathBuf::from(std::env::var_os("OUT_DIR")?);
    Some(out.ancestors().nth(3)?.to_path_buf())
}

fn write_pkg_config(root: &Path, libdir: &Path) {
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let text = format!(
        "prefix={root}\n\
         libdir={libdir}\n\
         includedir=${{prefix}}/include\n\
         \n\
         Name: tribe\n\
         Description: libtribe: tribes for monitoring agents (gossip, policies, remote plugins)\n\
         Version: {version}\n\
         Cflags: -I${{includedir}}\n\
         Libs: -L${{libdir}} -Wl,-rpath,${{libdir}} -ltribe\n\
         Libs.private: -lpthread -ldl -lm -lrt -lgcc_s -lc\n",
        root = root.display(),
        libdir = libdir.display(),
    );
    let path = libdir.join("tribe.pc");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        let _ = std::fs::write(path, text);
    }
}
