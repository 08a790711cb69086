//! The names of an incoming call (caller, tribe, plugin, version) as C
//! strings, in one buffer shared by the call's responder and its event:
//! one allocation a call where a C string each took six.

use std::ffi::CStr;
use std::sync::Arc;

use crate::CallInfo;

/// Caller, tribe, plugin and version, each NUL-terminated, back to back.
pub(super) struct CallNames {
    buf: Box<[u8]>,
    /// Where each name starts in `buf`; the last entry is its end.
    starts: [usize; 5],
}

const CALLER: usize = 0;
const TRIBE: usize = 1;
const PLUGIN: usize = 2;
const VERSION: usize = 3;

impl CallNames {
    pub(super) fn new(info: &CallInfo) -> Arc<CallNames> {
        let names = [&info.caller, &info.tribe, &info.plugin, &info.version];
        let mut buf = Vec::with_capacity(names.iter().map(|n| n.len() + 1).sum());
        let mut starts = [0; 5];
        for (i, name) in names.into_iter().enumerate() {
            starts[i] = buf.len();
            // A name C cannot hold (an inner NUL, from a peer) reads empty.
            if !name.as_bytes().contains(&0) {
                buf.extend_from_slice(name.as_bytes());
            }
            buf.push(0);
        }
        starts[4] = buf.len();
        Arc::new(CallNames {
            buf: buf.into_boxed_slice(),
            starts,
        })
    }

    fn get(&self, i: usize) -> &CStr {
        CStr::from_bytes_with_nul(&self.buf[self.starts[i]..self.starts[i + 1]]).unwrap_or_default()
    }

    pub(super) fn caller(&self) -> &CStr {
        self.get(CALLER)
    }

    pub(super) fn tribe(&self) -> &CStr {
        self.get(TRIBE)
    }

    pub(super) fn plugin(&self) -> &CStr {
        self.get(PLUGIN)
    }

    pub(super) fn version(&self) -> &CStr {
        self.get(VERSION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_and_an_inner_nul_reads_empty() {
        let info = CallInfo {
            caller: "n1".into(),
            tribe: "bad\0tribe".into(),
            plugin: "echo".into(),
            version: String::new(),
            budget: std::time::Duration::from_secs(1),
        };
        let names = CallNames::new(&info);
        assert_eq!(names.caller(), c"n1");
        assert_eq!(names.tribe(), c"");
        assert_eq!(names.plugin(), c"echo");
        assert_eq!(names.version(), c"");
    }
}
