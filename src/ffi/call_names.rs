//! The names of an incoming call (caller, tribe, plugin, version) as C
//! strings, in one buffer shared by the call's responder and its event:
//! one allocation a call, where a C string each took six.

use std::ffi::CStr;
use std::sync::Arc;

use crate::CallInfo;

/// Caller, tribe, plugin and version, each NUL-terminated, back to back.
/// Cloned by reference: the bytes are one allocation.
#[derive(Clone)]
pub(super) struct CallNames {
    buf: Arc<[u8]>,
    /// Where each name starts in `buf`; the last entry is its end.
    starts: [usize; 5],
}

const CALLER: usize = 0;
const TRIBE: usize = 1;
const PLUGIN: usize = 2;
const VERSION: usize = 3;

/// Names that fit this many bytes are gathered on the stack (checked
/// names are at most 64 bytes, a version 32); longer ones take a vector.
const ON_STACK: usize = 512;

impl CallNames {
    pub(super) fn new(info: &CallInfo) -> CallNames {
        // A name C cannot hold (an inner NUL, from a peer) reads empty.
        let names = [&info.caller, &info.tribe, &info.plugin, &info.version].map(|n| {
            if n.as_bytes().contains(&0) {
                ""
            } else {
                n.as_str()
            }
        });
        let total: usize = names.iter().map(|n| n.len() + 1).sum();
        let mut starts = [0; 5];
        let mut at = 0;
        for (i, name) in names.iter().enumerate() {
            starts[i] = at;
            at += name.len() + 1;
        }
        starts[4] = total;
        let fill = |buf: &mut [u8]| {
            for (i, name) in names.iter().enumerate() {
                buf[starts[i]..starts[i] + name.len()].copy_from_slice(name.as_bytes());
            }
        };
        let buf: Arc<[u8]> = if total <= ON_STACK {
            let mut stack = [0u8; ON_STACK];
            fill(&mut stack[..total]);
            Arc::from(&stack[..total])
        } else {
            let mut heap = vec![0u8; total];
            fill(&mut heap);
            Arc::from(heap)
        };
        CallNames { buf, starts }
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
        let long = CallInfo {
            caller: "c".repeat(600),
            ..info.clone()
        };
        assert_eq!(CallNames::new(&long).caller().to_bytes().len(), 600);
        assert_eq!(CallNames::new(&long).plugin(), c"echo");
        let names = CallNames::new(&info);
        assert_eq!(names.caller(), c"n1");
        assert_eq!(names.tribe(), c"");
        assert_eq!(names.plugin(), c"echo");
        assert_eq!(names.version(), c"");
    }
}
