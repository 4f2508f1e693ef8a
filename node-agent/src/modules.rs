//! Whether a kernel module is there: loaded (`/sys/module/<name>`) or built
//! into the kernel (listed in `/lib/modules/<release>/modules.builtin`).
//!
//! The kernel loads most modules tunlb needs on first use, so an absent
//! module is no reason to refuse anything: callers try first and consult
//! this only after the kernel refused, to name the module that is missing
//! instead of passing on an errno such as ENOENT.
//!
//! In a container the host's `/sys` and `/lib/modules` may be mounted
//! elsewhere: `TUNLB_SYS` and `TUNLB_LIB_MODULES` name those roots. The
//! chart's agent container sees the node's `/sys/module` (sysfs is not
//! namespaced there) but not its `/lib/modules`; a module that is neither
//! loaded nor known to be built in then counts as not available.

use std::path::{Path, PathBuf};

/// What the kernel has of one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// `/sys/module/<name>` exists: loaded (or built in with parameters).
    Loaded,
    /// Listed in `modules.builtin`.
    BuiltIn,
    /// Neither loaded nor listed in a readable `modules.builtin`.
    Absent,
    /// Not loaded, and `modules.builtin` could not be read: a built-in
    /// module without parameters has no `/sys/module` entry, so this
    /// cannot tell it from a missing one.
    NotLoaded,
}

impl Presence {
    pub fn is_available(self) -> bool {
        matches!(self, Presence::Loaded | Presence::BuiltIn)
    }
}

/// Where to look for modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// sysfs (`/sys`).
    pub sys: PathBuf,
    /// `/lib/modules`.
    pub lib_modules: PathBuf,
    /// The running kernel's release (`uname -r`); `None` when unknown.
    pub release: Option<String>,
}

impl Roots {
    /// `/sys` and `/lib/modules`, or `TUNLB_SYS` and `TUNLB_LIB_MODULES`;
    /// the release from `/proc/sys/kernel/osrelease` (what `uname -r` reads).
    pub fn from_env() -> Roots {
        let dir = |var: &str, default: &str| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(default))
        };
        Roots {
            sys: dir("TUNLB_SYS", "/sys"),
            lib_modules: dir("TUNLB_LIB_MODULES", "/lib/modules"),
            release: crate::dataplane::kernel_release(),
        }
    }

    /// Whether module `name` (as modprobe spells it; `-` and `_` are the
    /// same) is loaded or built in.
    pub fn presence(&self, name: &str) -> Presence {
        let name = canonical(name);
        if self.sys.join("module").join(&name).is_dir() {
            return Presence::Loaded;
        }
        let builtin = self
            .release
            .as_ref()
            .map(|r| self.lib_modules.join(r).join("modules.builtin"))
            .and_then(|path| std::fs::read_to_string(path).ok());
        match builtin {
            Some(list) if lists(&list, &name) => Presence::BuiltIn,
            Some(_) => Presence::Absent,
            None => Presence::NotLoaded,
        }
    }
}

/// The kernel's own spelling of a module name: sysfs and modules.builtin
/// entries use `_` where file names and modprobe arguments may use `-`.
fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// Whether `modules.builtin` text (one `kernel/.../<name>.ko` path a line)
/// lists module `name` (canonical).
fn lists(builtin: &str, name: &str) -> bool {
    builtin.lines().any(|line| {
        Path::new(line.trim())
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.strip_suffix(".ko"))
            .is_some_and(|stem| canonical(stem) == name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!(
                "tunlb-modules-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mkdir(p: &Path) {
        std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }

    fn roots(dir: &Path, builtin: Option<&str>) -> Roots {
        let roots = Roots {
            sys: dir.join("sys"),
            lib_modules: dir.join("lib/modules"),
            release: Some("6.1.0-test".into()),
        };
        mkdir(&roots.sys.join("module/nf_tables"));
        mkdir(&roots.sys.join("module/ip_vs"));
        if let Some(text) = builtin {
            let kdir = roots.lib_modules.join("6.1.0-test");
            mkdir(&kdir);
            std::fs::write(kdir.join("modules.builtin"), text)
                .unwrap_or_else(|e| panic!("modules.builtin: {e}"));
        }
        roots
    }

    #[test]
    fn loaded_built_in_or_absent() {
        let s = Scratch::new("known");
        let r = roots(
            &s.0,
            Some("kernel/net/netfilter/nft_ct.ko\nkernel/net/netfilter/nft-fib.ko\n"),
        );
        assert_eq!(r.presence("nf_tables"), Presence::Loaded);
        assert_eq!(r.presence("nft_ct"), Presence::BuiltIn);
        assert_eq!(
            r.presence("nft_fib"),
            Presence::BuiltIn,
            "a dash in the file name"
        );
        assert_eq!(
            r.presence("ip-vs"),
            Presence::Loaded,
            "a dash in the request"
        );
        assert_eq!(r.presence("nft_numgen"), Presence::Absent);
        assert_eq!(
            r.presence("nft_c"),
            Presence::Absent,
            "a prefix is not the module"
        );
        assert!(r.presence("nf_tables").is_available());
        assert!(r.presence("nft_ct").is_available());
        assert!(!r.presence("nft_numgen").is_available());
    }

    #[test]
    fn without_modules_builtin_only_loaded_modules_are_known() {
        let s = Scratch::new("unknown");
        let r = roots(&s.0, None);
        assert_eq!(r.presence("nf_tables"), Presence::Loaded);
        assert_eq!(r.presence("nft_numgen"), Presence::NotLoaded);
        assert!(!r.presence("nft_numgen").is_available());
        let r = Roots { release: None, ..r };
        assert_eq!(r.presence("nft_numgen"), Presence::NotLoaded);
    }
}
