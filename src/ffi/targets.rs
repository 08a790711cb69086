//! The targets a node's host calls, kept once checked: a host calls the
//! same few plugins again and again, and building a target anew took an
//! allocation per name and a check of each, on every call.

use std::ffi::c_char;
use std::sync::{Arc, Mutex};

use super::cast;
use super::commands::plugin_kind;
use super::error::FfiError;
use crate::CallTarget;

/// Targets kept at most; the oldest goes when a new one comes.
const KEPT: usize = 16;

/// The targets last called, newest last.
#[derive(Default)]
pub(super) struct Targets {
    kept: Mutex<Vec<Arc<CallTarget>>>,
}

impl Targets {
    /// The target these C arguments name, checked: `TRIBE_INVALID_NAME`
    /// (at once, also for an asynchronous call) when a name is not one.
    pub(super) fn get(
        &self,
        tribe: *const c_char,
        plugin: *const c_char,
        version: *const c_char,
        kind: u32,
    ) -> Result<Arc<CallTarget>, FfiError> {
        let tribe = cast::text(tribe, "tribe")?;
        let plugin = cast::text(plugin, "plugin")?;
        let version = cast::opt_text(version, "version")?;
        let kind = plugin_kind(kind)?;
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let found = kept.iter().rev().find(|t| {
            t.kind == kind
                && t.tribe == tribe
                && t.plugin == plugin
                && t.version.as_deref() == version
        });
        if let Some(t) = found {
            return Ok(t.clone());
        }
        let target = CallTarget {
            tribe: tribe.into(),
            plugin: plugin.into(),
            version: version.map(Into::into),
            kind,
        };
        target.check()?;
        let target = Arc::new(target);
        if kept.len() == KEPT {
            kept.remove(0);
        }
        kept.push(target.clone());
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::call::TRIBE_KIND_PROCESSOR;
    use std::ffi::CStr;

    fn get(
        targets: &Targets,
        tribe: &CStr,
        plugin: &CStr,
        version: Option<&CStr>,
    ) -> Result<Arc<CallTarget>, FfiError> {
        let version = version.map_or(std::ptr::null(), CStr::as_ptr);
        targets.get(
            tribe.as_ptr(),
            plugin.as_ptr(),
            version,
            TRIBE_KIND_PROCESSOR,
        )
    }

    #[test]
    fn a_target_is_built_once_and_bad_names_are_refused_every_time() {
        let targets = Targets::default();
        let a = get(&targets, c"svc", c"echo", None).unwrap();
        let b = get(&targets, c"svc", c"echo", None).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let v1 = get(&targets, c"svc", c"echo", Some(c"1")).unwrap();
        assert!(!Arc::ptr_eq(&a, &v1));
        assert_eq!(v1.version.as_deref(), Some("1"));
        for _ in 0..2 {
            assert!(get(&targets, c"bad name", c"echo", None).is_err());
        }
        for i in 0..KEPT + 4 {
            let name = std::ffi::CString::new(format!("p{i}")).unwrap();
            get(&targets, c"svc", &name, None).unwrap();
        }
        assert_eq!(targets.kept.lock().unwrap().len(), KEPT);
    }
}
