//! A file written around the page cache: on Linux it is opened `O_DIRECT`, whole aligned blocks
//! go straight to the disk, and at [`DirectFile::finish`] the short tail is padded to a block
//! and the file cut back to its true length. A run's output (gigabytes at national scale) is
//! written once and read by another program, so caching it only evicts the input, and on a
//! virtual machine every page of cache the kernel fills costs a fresh page of host memory and
//! system time. Where the file system refuses `O_DIRECT` (tmpfs), or on another OS, the file
//! is written through the cache as any other. This module moves bytes; it never looks at them.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// The alignment of buffers, offsets and lengths that direct I/O asks for: a page, which every
/// Linux file system's logical block divides.
const BLOCK: usize = 4096;

/// Bytes gathered before a write: large writes keep the disk busy with few system calls.
const CAPACITY: usize = 2 << 20;

/// Buffers per file: while one fills, the others wait for the writer or are being written. With
/// only two, the thread handing clients to the sink in order waits for the disk whenever one
/// write is slow (the writer thread not scheduled at once, or the disk itself) while the cores
/// idle; eight absorb such stalls, for at most 16 MiB per file.
const BUFFERS: usize = 8;

/// A buffer of [`CAPACITY`] bytes starting on a [`BLOCK`] boundary.
#[derive(Debug)]
struct Aligned {
    /// Never reallocated, so `start` stays aligned.
    bytes: Vec<u8>,
    start: usize,
}

impl Aligned {
    fn new() -> Self {
        let bytes = vec![0u8; CAPACITY + BLOCK];
        let start = bytes.as_ptr().align_offset(BLOCK);
        Self { bytes, start }
    }

    fn get(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + CAPACITY]
    }
}

/// A file being written, direct where the file system allows it. A thread of its own makes the
/// writes, so the thread that fills the next buffer never waits for the disk, which a direct
/// write does; [`BUFFERS`] buffers take turns.
#[derive(Debug)]
pub(crate) struct DirectFile {
    clone: File,
    direct: bool,
    buffer: Aligned,
    /// Bytes gathered in `buffer`.
    len: usize,
    /// Bytes handed to the writer so far.
    written: u64,
    /// Full buffers, with the bytes to write of each, to the writer.
    full: Option<mpsc::SyncSender<(Aligned, usize)>>,
    /// Buffers the writer is done with.
    empty: mpsc::Receiver<Aligned>,
    /// Buffers made so far: one more only when none is free, so a file written little (the
    /// Flags, the rejections) holds one or two.
    made: usize,
    writer: Option<JoinHandle<io::Result<File>>>,
}

impl DirectFile {
    /// Creates (or truncates) `path`.
    pub(crate) fn create(path: &Path) -> io::Result<Self> {
        match open(path, true) {
            Ok(file) => Self::new(file, true),
            // EINVAL: a file system without direct I/O.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                Self::new(open(path, false)?, false)
            }
            Err(e) => Err(e),
        }
    }

    fn new(mut file: File, direct: bool) -> io::Result<Self> {
        let clone = file.try_clone()?;
        let (full, work) = mpsc::sync_channel::<(Aligned, usize)>(BUFFERS);
        let (done, empty) = mpsc::sync_channel(BUFFERS);
        let writer = std::thread::spawn(move || {
            for (mut buffer, n) in work {
                file.write_all(&buffer.get()[..n])?;
                // The file's owner may be gone, having failed elsewhere: nothing to hand back.
                let _ = done.send(buffer);
            }
            Ok(file)
        });
        Ok(Self {
            clone,
            direct,
            buffer: Aligned::new(),
            len: 0,
            written: 0,
            full: Some(full),
            empty,
            made: 1,
            writer: Some(writer),
        })
    }

    /// The open file, for syncing it from another thread.
    pub(crate) fn try_clone(&self) -> io::Result<File> {
        self.clone.try_clone()
    }

    /// Hands the gathered bytes to the writer: whole blocks when direct (the rest starts the
    /// next buffer, or waits for [`Self::finish`]), everything otherwise.
    fn hand_over(&mut self) -> io::Result<()> {
        let whole = if self.direct {
            self.len / BLOCK * BLOCK
        } else {
            self.len
        };
        if whole == 0 {
            return Ok(());
        }
        let next = match self.empty.try_recv() {
            Ok(free) => Ok(free),
            Err(mpsc::TryRecvError::Empty) if self.made < BUFFERS => {
                self.made += 1;
                Ok(Aligned::new())
            }
            Err(mpsc::TryRecvError::Empty) => self.empty.recv().map_err(drop),
            Err(mpsc::TryRecvError::Disconnected) => Err(()),
        };
        let Ok(mut next) = next else {
            return Err(self.writer_error());
        };
        let rest = self.len - whole;
        next.get()[..rest].copy_from_slice(&self.buffer.get()[whole..self.len]);
        let full = std::mem::replace(&mut self.buffer, next);
        self.send(full, whole)?;
        self.len = rest;
        Ok(())
    }

    fn send(&mut self, buffer: Aligned, n: usize) -> io::Result<()> {
        let sent = self.full.as_ref().map(|full| full.send((buffer, n)));
        if !matches!(sent, Some(Ok(()))) {
            return Err(self.writer_error());
        }
        self.written += n as u64;
        Ok(())
    }

    /// Why the writer stopped: its error, once it has ended.
    fn writer_error(&mut self) -> io::Error {
        self.full = None;
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            Some(Err(_)) => io::Error::other("the thread writing the file panicked"),
            _ => io::Error::other("the thread writing the file stopped"),
        }
    }

    /// Writes the rest, waits for the writer and gives the file back, its length exactly the
    /// bytes written.
    pub(crate) fn finish(mut self) -> io::Result<File> {
        let (tail, padded) = if self.direct {
            (self.len, self.len.div_ceil(BLOCK) * BLOCK)
        } else {
            (self.len, self.len)
        };
        self.buffer.get()[tail..padded].fill(0);
        if padded > 0 {
            let last = std::mem::replace(
                &mut self.buffer,
                Aligned {
                    bytes: Vec::new(),
                    start: 0,
                },
            );
            self.send(last, padded)?;
        }
        self.full = None;
        let file = match self.writer.take().map(JoinHandle::join) {
            Some(Ok(result)) => result?,
            _ => return Err(io::Error::other("the thread writing the file panicked")),
        };
        file.set_len(self.written - (padded - tail) as u64)?;
        Ok(file)
    }
}

impl Write for DirectFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = bytes.len().min(CAPACITY - self.len);
        let len = self.len;
        self.buffer.get()[len..len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        if self.len == CAPACITY {
            self.hand_over()?;
        }
        Ok(n)
    }

    /// Hands over the whole blocks gathered; a direct file's last partial block waits for
    /// [`DirectFile::finish`].
    fn flush(&mut self) -> io::Result<()> {
        self.hand_over()
    }
}

#[cfg(target_os = "linux")]
fn open(path: &Path, direct: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = File::options();
    options.write(true).create(true).truncate(true);
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    options.open(path)
}

#[cfg(not(target_os = "linux"))]
fn open(path: &Path, direct: bool) -> io::Result<File> {
    if direct {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    File::create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces of every size around the block and buffer edges, as the sink writes them.
    fn pieces() -> Vec<Vec<u8>> {
        let sizes = [
            0,
            1,
            4095,
            4096,
            4097,
            5000,
            123,
            CAPACITY - 7,
            3 * BLOCK,
            17,
        ];
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|k| (k * 31 + i * 7) as u8).collect())
            .collect()
    }

    fn roundtrip(direct: bool, pieces: &[Vec<u8>]) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("out.ndjson");
        let mut file = match direct {
            true => DirectFile::create(&path).expect("created"),
            false => DirectFile::new(open(&path, false).expect("opened"), false).expect("made"),
        };
        for p in pieces {
            file.write_all(p).expect("written");
            file.flush().expect("flushed");
        }
        file.finish().expect("finished").sync_all().expect("synced");
        let expected: Vec<u8> = pieces.concat();
        let found = std::fs::read(&path).expect("read back");
        assert_eq!(found.len(), expected.len(), "direct: {direct}");
        assert!(found == expected, "direct: {direct}");
    }

    #[test]
    fn the_file_holds_exactly_the_bytes_written_direct_or_not() {
        for direct in [true, false] {
            roundtrip(direct, &pieces());
            roundtrip(direct, &[]);
            roundtrip(direct, &[vec![b'x'; BLOCK]]);
            // More than every buffer holds, so buffers are made, then taken back in turn.
            let many: Vec<Vec<u8>> = (0..(BUFFERS + 3) * 4)
                .map(|i| vec![i as u8; CAPACITY / 4 + 1])
                .collect();
            roundtrip(direct, &many);
        }
    }

    /// A write that fails on the writer's thread fails the file's next write or its finish,
    /// with the cause.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_write_is_reported_with_its_cause() {
        let mut file = DirectFile::create(Path::new("/dev/full")).expect("opened");
        let chunk = vec![b'x'; CAPACITY];
        let failed = (0..4)
            .map(|_| file.write_all(&chunk))
            .find_map(Result::err)
            .or_else(|| file.finish().err())
            .expect("a write to a full device fails");
        assert_eq!(failed.raw_os_error(), Some(libc::ENOSPC), "{failed}");
    }
}
