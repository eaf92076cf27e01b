//! The CLOSE_WAIT promotion iterator (`iter/tcp`, kernel side in `observer-ebpf`'s
//! `close_wait::promote`): loaded and pinned here, read by the CLOSE_WAIT tracker before each
//! scan. Reading the pinned link runs the program over the TCP sockets of the reader's network
//! namespace, so the tracker reads it once in each namespace a task is in.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf,
    programs::{Iter, links::FdLink},
};

/// The program's name in the object.
const PROGRAM: &str = "promote";
/// The pinned link's file name in the pin directory.
const PIN: &str = "close_wait_promote";

/// The pinned iterator link; unpinned (and so detached) on drop.
#[derive(Debug)]
pub struct Promoter {
    path: PathBuf,
}

impl Promoter {
    /// Loads and attaches the iterator and pins its link in `pin_dir` (replacing one a
    /// previous agent left). An error means this kernel has no TCP iterator (before 5.9) or
    /// refused the program: the programs then insert every CLOSE_WAIT entry on entry.
    pub fn attach(ebpf: &mut Ebpf, btf: &Btf, pin_dir: &Path) -> Result<Self, String> {
        let program: &mut Iter = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| format!("program {PROGRAM} not in the object"))?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        program.load("tcp", btf).map_err(|e| format!("load: {e}"))?;
        let id = program.attach().map_err(|e| format!("attach: {e}"))?;
        let link: FdLink = program
            .take_link(id)
            .map_err(|e| format!("{e}"))?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        let path = pin_dir.join(PIN);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(format!("removing the stale pin {}: {e}", path.display()));
            }
            _ => {}
        }
        // The pin holds the link (and the program) until `drop` removes it.
        link.pin(&path)
            .map_err(|e| format!("pinning {}: {e}", path.display()))?;
        Ok(Self { path })
    }

    /// Runs the iterator in each of `namespaces`; returns how many it could enter.
    pub fn run(&self, namespaces: &BTreeMap<u32, PathBuf>) -> usize {
        crate::sock_diag::in_each(namespaces, |_| {
            // The program writes nothing: reading to the end walks every socket once.
            io::copy(&mut std::fs::File::open(&self.path)?, &mut io::sink())
        })
        .len()
    }
}

impl Drop for Promoter {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
