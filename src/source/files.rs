//! Files on disk: a single file or a directory (searched recursively, in name order so runs
//! are reproducible) of `*.ndjson`, `*.ndjson.gz` and `*.json`. NDJSON is read (for `.gz`,
//! decompressed) and cut into blocks of complete lines by [`LineBlocks`], which Bulk Data
//! downloads streamed into the fold share; a `.json` file holds one resource
//! or a Bundle (collection, transaction, batch, searchset), whose `urn:uuid:` references are
//! resolved to `Type/id` before its entries go on. A line that is not UTF-8 becomes an
//! unreadable item, not an error, so the rest of the file is still read.
//!
//! What a file may cost is bounded ([`Limits`]): a line longer than `max_line_bytes` becomes an
//! unreadable item too (named by file and line, its bytes skipped unread to the next newline),
//! and a `.gz` file or Bulk download that expands past `max_decompressed_bytes` stops the read
//! with an error naming the file and line (a decompression bomb).
//!
//! Symbolic links: the path given is followed, whatever it is. Below it, links to files are
//! followed and links to directories are not (each is named in a warning), so that a link to a
//! parent or two links to each other cannot read a file twice or loop; a file reached by two
//! paths (a link beside its target) is read once, by the first of its paths in name order.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::read::MultiGzDecoder;
use serde_json::Value;
use tracing::warn;

use super::{BATCH, Batch, Item, Origin, Payload};

/// Why input files could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file or directory could not be read.
    #[error(
        "cannot read {path}: {source}\nhint: check the path and permissions; a .gz file may be corrupt"
    )]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Nothing to read.
    #[error(
        "no input files in {path}\nhint: give a directory of *.ndjson / *.ndjson.gz (Bulk Data output) or *.json Bundles"
    )]
    NoFiles {
        /// The path given.
        path: PathBuf,
    },
    /// A `.json` file that is not a resource or Bundle.
    #[error(
        "{path} is not a FHIR resource or Bundle: {reason}\nhint: a .json file holds one resource or one Bundle; use .ndjson for one resource per line"
    )]
    NotAResource {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file that expands past [`Limits::max_decompressed_bytes`].
    #[error(
        "{file} expands to more than {limit} bytes (stopped at line {line}); nothing after that was read\nhint: a small file that expands this far is a decompression bomb or corrupt; if it is a real export, raise --max-decompressed-bytes"
    )]
    TooLarge {
        /// The file (or Bulk download's URL, redacted).
        file: Arc<str>,
        /// The limit passed.
        limit: u64,
        /// The line being read when it was passed.
        line: u64,
    },
    /// The consumer stopped the read.
    #[error("reading stopped: {0}")]
    Stopped(String),
}

/// What one input file may cost. The defaults leave room for any real export while keeping a
/// hostile one to about a line's worth of memory and a bounded time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest line read; a longer one is rejected (file and line) and skipped. 64 MiB by
    /// default: a resource with an attached document or image runs to a few megabytes, and a
    /// line within the limit is held whole (and parsed), so the limit is what one line may take
    /// of memory (about twice it, while its buffer grows).
    pub max_line_bytes: usize,
    /// The most bytes a `.gz` file or a Bulk download may expand to before the read stops with
    /// an error. 64 GiB by default: far more than one file of a county's export holds, while a
    /// bomb is still stopped after about a minute of decompression.
    pub max_decompressed_bytes: u64,
}

impl Limits {
    /// The defaults (see the fields).
    pub const DEFAULT: Self = Self {
        max_line_bytes: 64 << 20,
        max_decompressed_bytes: 64 << 30,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The input files under `path`, in a stable order (see the module's note on symbolic links).
pub(crate) fn list(path: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SourceError::Io { path, source }
    };
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if meta.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    let mut dirs = vec![path.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let p = entry.path();
            // The entry itself, not what a link points to: a link is never taken for a directory.
            let linked = entry.file_type().map_err(io(&p))?.is_symlink();
            if !p.is_dir() {
                if is_input(&p) {
                    out.push(p);
                }
            } else if linked {
                warn!(link = %p.display(), "a symbolic link to a directory is not followed; give the directory itself as --input");
            } else {
                dirs.push(p);
            }
        }
    }
    out.sort();
    let mut seen = HashSet::new();
    out.retain(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
    if out.is_empty() {
        return Err(SourceError::NoFiles {
            path: path.to_owned(),
        });
    }
    Ok(out)
}

fn is_input(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    name.ends_with(".ndjson") || name.ends_with(".ndjson.gz") || name.ends_with(".json")
}

/// Reads every input file under `path` within `limits`, handing batches of items to `emit`.
/// `emit` returning an error stops the read.
pub fn read(
    path: &Path,
    limits: Limits,
    mut emit: impl FnMut(Batch) -> Result<(), String>,
) -> Result<(), SourceError> {
    for file in list(path)? {
        let name: Arc<str> = Arc::from(file.display().to_string());
        if file.extension().is_some_and(|e| e == "json") {
            read_json(&file, &name, limits, &mut emit)?;
        } else {
            read_ndjson(&file, &name, limits, &mut emit)?;
        }
    }
    Ok(())
}

/// How many bytes of NDJSON a [`Batch::Lines`] holds, about.
const CHUNK: usize = 4 << 20;

/// How much is read from a file at a time.
const READ: usize = 256 << 10;

fn read_ndjson(
    file: &Path,
    name: &Arc<str>,
    limits: Limits,
    emit: &mut impl FnMut(Batch) -> Result<(), String>,
) -> Result<(), SourceError> {
    let opened = File::open(file).map_err(|source| SourceError::Io {
        path: file.to_owned(),
        source,
    })?;
    let mut raw = Readahead::new(opened);
    if is_gz(file) {
        let mut gz = MultiGzDecoder::new(raw);
        let lines = LineBlocks::new(name.clone(), limits);
        read_blocks(lines, |lines| lines.fill(&mut gz), emit)
    } else {
        // A plain file holds what its size says: the cap is on what a small file expands to.
        let limits = Limits {
            max_decompressed_bytes: u64::MAX,
            ..limits
        };
        let lines = LineBlocks::new(name.clone(), limits);
        read_blocks(lines, |lines| raw.fill(lines), emit)
    }
}

/// Hands every block of lines that `next` reads into `lines` to `emit`, the last one too.
fn read_blocks(
    mut lines: LineBlocks,
    mut next: impl FnMut(&mut LineBlocks) -> Result<(usize, Option<Batch>), SourceError>,
    emit: &mut impl FnMut(Batch) -> Result<(), String>,
) -> Result<(), SourceError> {
    loop {
        let (read, batch) = next(&mut lines)?;
        if let Some(batch) = batch {
            emit(batch).map_err(SourceError::Stopped)?;
        }
        if read == 0 {
            break;
        }
    }
    match lines.finish() {
        Some(batch) => emit(batch).map_err(SourceError::Stopped),
        None => Ok(()),
    }
}

fn is_gz(file: &Path) -> bool {
    file.to_string_lossy().ends_with(".gz")
}

/// Opens an NDJSON file (`.gz`: decompressed as it is read) for reading from start to end,
/// with `Readahead`.
pub(crate) fn open(file: &Path) -> std::io::Result<Box<dyn Read + Send>> {
    let raw = Readahead::new(File::open(file)?);
    Ok(if is_gz(file) {
        Box::new(MultiGzDecoder::new(raw))
    } else {
        Box::new(raw)
    })
}

/// How far ahead of the reader the kernel is asked to fetch a file.
const AHEAD: u64 = 64 << 20;

/// A file read from start to end that asks the kernel (`POSIX_FADV_WILLNEED`) to fetch the
/// next `AHEAD` bytes before they are wanted. The kernel's own readahead fetches a few
/// hundred kilobytes at a time and waits for each, so a file that is not in the page cache (a
/// fresh export, or one too large to stay there) is read at the disk's latency rather than its
/// bandwidth, while the parsing threads wait. Asking is cheap for pages already cached, and only
/// a hint: a kernel or file system that ignores it reads as before.
#[derive(Debug)]
struct Readahead {
    file: File,
    position: u64,
    asked_to: u64,
}

impl Readahead {
    /// Reads `file` from its start.
    pub(crate) fn new(file: File) -> Self {
        Self {
            file,
            position: 0,
            asked_to: 0,
        }
    }

    /// Reads the next bytes of the file into `lines` ([`LineBlocks::fill`]). The file itself,
    /// not this wrapper, is handed to the block: `std` fills a buffer's unused capacity from a
    /// `File` as it is, where any other reader gets it zeroed first (2 % of a run's time).
    pub(crate) fn fill(
        &mut self,
        lines: &mut LineBlocks,
    ) -> Result<(usize, Option<Batch>), SourceError> {
        self.advise();
        let (n, batch) = lines.fill(&mut self.file)?;
        self.position += n as u64;
        Ok((n, batch))
    }

    fn advise(&mut self) {
        // Asked again at half the window, so the next half is on its way while this one is read.
        if self.position + AHEAD / 2 >= self.asked_to {
            let from = self.asked_to.max(self.position);
            // A hint: an error (a pipe, a file system without it) changes nothing.
            let _ = rustix::fs::fadvise(
                &self.file,
                from,
                std::num::NonZeroU64::new(AHEAD),
                rustix::fs::Advice::WillNeed,
            );
            self.asked_to = from + AHEAD;
        }
    }
}

impl Read for Readahead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.advise();
        let n = self.file.read(buf)?;
        self.position += n as u64;
        Ok(n)
    }
}

/// NDJSON cut, as its bytes arrive, into blocks of complete lines of about `CHUNK` bytes:
/// the one line reader of files on disk and of Bulk Data downloads streamed into the fold
/// ([`super::bulk`]), so both number lines, treat bytes that are not UTF-8 and keep to
/// [`Limits`] alike.
///
/// Each byte is searched for a newline once, from the end of what arrived: a long line is not
/// searched again on every read. One longer than the limit is dropped as its bytes arrive and an
/// empty line holds its place (so the lines after it keep their numbers) until its block is
/// handed on, where it becomes an unreadable item.
#[derive(Debug)]
pub struct LineBlocks {
    name: Arc<str>,
    limits: Limits,
    block: Vec<u8>,
    /// Where the block's unfinished last line starts: the bytes before it are complete lines.
    tail: usize,
    first_line: u64,
    /// The bytes taken so far, for [`Limits::max_decompressed_bytes`].
    taken: u64,
    /// The numbers of the over-long lines whose place the block holds.
    long: Vec<u64>,
    /// Whether the bytes arriving are the rest of an over-long line, dropped to its end.
    skipping: bool,
}

impl LineBlocks {
    /// An empty reader of the file called `name` (the origin its lines are given).
    pub fn new(name: Arc<str>, limits: Limits) -> Self {
        Self {
            name,
            limits,
            block: Vec::new(),
            tail: 0,
            first_line: 1,
            taken: 0,
            long: Vec::new(),
            skipping: false,
        }
    }

    /// Takes the next bytes; once a block's worth has arrived, its complete lines are handed
    /// back and the unfinished last line starts the next block.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<Batch>, SourceError> {
        self.reserve();
        let from = self.block.len();
        self.block.extend_from_slice(bytes);
        self.took(from)
    }

    /// [`Self::push`] for a reader at hand (a file): reads straight into the block, sparing a
    /// copy of every byte; the bytes read (0 at the end) and a block when one is complete.
    pub(crate) fn fill(
        &mut self,
        reader: &mut impl Read,
    ) -> Result<(usize, Option<Batch>), SourceError> {
        self.reserve();
        let from = self.block.len();
        let want = CHUNK.saturating_sub(from).max(READ);
        let read = reader
            .take(want as u64)
            .read_to_end(&mut self.block)
            .map_err(|source| SourceError::Io {
                path: PathBuf::from(&*self.name),
                source,
            })?;
        Ok((read, self.took(from)?))
    }

    fn reserve(&mut self) {
        if self.block.capacity() == 0 {
            self.block.reserve(CHUNK + READ);
        }
    }

    /// Takes in the bytes of the block from `from` on: drops what belongs to an over-long line,
    /// finds where the last line starts, and hands on a full block's complete lines.
    fn took(&mut self, from: usize) -> Result<Option<Batch>, SourceError> {
        self.taken += (self.block.len() - from) as u64;
        if self.taken > self.limits.max_decompressed_bytes {
            return Err(SourceError::TooLarge {
                file: self.name.clone(),
                limit: self.limits.max_decompressed_bytes,
                line: self.first_line + newlines(&self.block[..self.tail]),
            });
        }
        if self.skipping {
            match memchr::memchr(b'\n', &self.block[from..]) {
                None => {
                    self.block.truncate(from);
                    return Ok(None);
                }
                Some(end) => {
                    self.block.drain(from..from + end);
                    self.skipping = false;
                }
            }
        }
        if let Some(end) = memchr::memrchr(b'\n', &self.block[from..]) {
            self.tail = from + end + 1;
        }
        if self.block.len() - self.tail > self.limits.max_line_bytes {
            self.long
                .push(self.first_line + newlines(&self.block[..self.tail]));
            self.block.truncate(self.tail);
            self.skipping = true;
            return Ok(None);
        }
        Ok(self.cut())
    }

    /// The complete lines of a full block; the unfinished last line starts the next.
    fn cut(&mut self) -> Option<Batch> {
        // A line longer than a block waits for its end.
        if self.block.len() < CHUNK || self.tail == 0 {
            return None;
        }
        let mut next = Vec::with_capacity(CHUNK + READ);
        next.extend_from_slice(&self.block[self.tail..]);
        self.block.truncate(self.tail);
        self.tail = 0;
        let block = std::mem::replace(&mut self.block, next);
        Some(self.batch(block))
    }

    /// The rest, at the end of the input: its last line need not end in a newline.
    pub fn finish(mut self) -> Option<Batch> {
        if self.skipping {
            // The place of the over-long last line.
            self.block.push(b'\n');
        }
        let block = std::mem::take(&mut self.block);
        (!block.is_empty()).then(|| self.batch(block))
    }

    /// The lines read so far (handed back in blocks), for messages.
    pub(crate) fn lines(&self) -> u64 {
        self.first_line - 1
    }

    fn batch(&mut self, block: Vec<u8>) -> Batch {
        let first_line = self.first_line;
        let lines = newlines(&block) as usize + usize::from(!block.ends_with(b"\n"));
        self.first_line += lines as u64;
        let long = std::mem::take(&mut self.long);
        // Only a block longer than the limit can hold a complete line longer than it.
        let max = self.limits.max_line_bytes;
        if long.is_empty() && (block.len() <= max || longest_line(&block) <= max) {
            match String::from_utf8(block) {
                Ok(text) => Batch::Lines {
                    file: self.name.clone(),
                    first_line,
                    lines,
                    text,
                },
                Err(e) => Batch::Items(split_lines(
                    &self.name,
                    first_line,
                    &e.into_bytes(),
                    max,
                    &[],
                )),
            }
        } else {
            Batch::Items(split_lines(&self.name, first_line, &block, max, &long))
        }
    }
}

fn newlines(bytes: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', bytes).count() as u64
}

fn longest_line(block: &[u8]) -> usize {
    let mut start = 0;
    let mut longest = 0;
    for end in memchr::memchr_iter(b'\n', block).chain([block.len()]) {
        longest = longest.max(end - start);
        start = end + 1;
    }
    longest
}

/// A block with some bytes that are not UTF-8 or some lines longer than `max_line` (complete,
/// or by number in `long`, their bytes already dropped), line by line: the good lines as text,
/// the bad ones as unreadable, so the rest of the file is still read.
fn split_lines(
    name: &Arc<str>,
    first_line: u64,
    block: &[u8],
    max_line: usize,
    long: &[u64],
) -> Vec<Item> {
    block
        .split(|&b| b == b'\n')
        .zip(first_line..)
        .filter_map(|(line, number)| {
            let payload = if line.len() > max_line || long.contains(&number) {
                Payload::Unreadable(format!(
                    "line longer than {max_line} bytes, skipped unread; raise --max-line-bytes if it is a real resource"
                ))
            } else if line.iter().all(u8::is_ascii_whitespace) {
                return None;
            } else {
                match std::str::from_utf8(line) {
                    Ok(s) => Payload::Line(s.trim_end_matches('\r').to_owned()),
                    Err(e) => Payload::Unreadable(format!(
                        "line is not UTF-8 (invalid byte at column {}); re-export the file as UTF-8",
                        e.valid_up_to() + 1
                    )),
                }
            };
            let origin = Origin {
                file: name.clone(),
                line: number,
                entry: false,
            };
            Some(Item { origin, payload })
        })
        .collect()
}

/// Reads a JSON file (a Bundle or one resource) whole: one document, held to the limit of one
/// line, so that a file past it is a located reject and the other files are still read.
fn read_json(
    file: &Path,
    name: &Arc<str>,
    limits: Limits,
    emit: &mut impl FnMut(Batch) -> Result<(), String>,
) -> Result<(), SourceError> {
    let io = |source| SourceError::Io {
        path: file.to_owned(),
        source,
    };
    let size = std::fs::metadata(file).map_err(io)?.len();
    if size > limits.max_line_bytes as u64 {
        return emit(Batch::Items(vec![Item {
            origin: Origin {
                file: name.clone(),
                line: 1,
                entry: false,
            },
            payload: Payload::Unreadable(format!(
                "a JSON file of {size} bytes, over the limit of one document ({} bytes), skipped unread; raise --max-line-bytes if it is a real Bundle",
                limits.max_line_bytes
            )),
        }]))
        .map_err(SourceError::Stopped);
    }
    let bytes = std::fs::read(file).map_err(io)?;
    let not = |reason: String| SourceError::NotAResource {
        path: file.to_owned(),
        reason,
    };
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        not(format!(
            "invalid JSON at line {} column {}: {e}",
            e.line(),
            e.column()
        ))
    })?;
    let origin = |line: u64, entry: bool| Origin {
        file: name.clone(),
        line,
        entry,
    };
    if value.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return emit(Batch::Items(vec![Item {
            origin: origin(1, false),
            payload: Payload::Value(value),
        }]))
        .map_err(SourceError::Stopped);
    }
    let items = bundle_entries(value).map_err(not)?;
    for chunk in items.chunks(BATCH) {
        let batch = chunk
            .iter()
            .map(|(i, v)| Item {
                origin: origin(*i, true),
                payload: Payload::Value(v.clone()),
            })
            .collect();
        emit(Batch::Items(batch)).map_err(SourceError::Stopped)?;
    }
    Ok(())
}

/// A Bundle's entry resources with their entry index, `urn:uuid:` references rewritten to
/// `Type/id` (an entry without id takes the UUID of its fullUrl as id).
pub fn bundle_entries(mut bundle: Value) -> Result<Vec<(u64, Value)>, String> {
    let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) else {
        return Ok(Vec::new());
    };
    let mut targets: HashMap<String, String> = HashMap::new();
    for entry in entries.iter_mut() {
        let full_url = entry
            .get("fullUrl")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let Some(resource) = entry.get_mut("resource") else {
            continue;
        };
        let Some(kind) = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            continue;
        };
        if let Some(url) = full_url {
            let id = match resource.get("id").and_then(Value::as_str) {
                Some(id) => id.to_owned(),
                None => match url.strip_prefix("urn:uuid:") {
                    Some(uuid) => {
                        resource["id"] = Value::String(uuid.to_owned());
                        uuid.to_owned()
                    }
                    None => continue,
                },
            };
            targets.insert(url, format!("{kind}/{id}"));
        }
    }
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter_mut().enumerate() {
        let Some(resource) = entry.get_mut("resource").map(Value::take) else {
            return Err(format!("entry[{i}] has no resource"));
        };
        let mut resource = resource;
        rewrite_references(&mut resource, &targets);
        out.push((i as u64, resource));
    }
    Ok(out)
}

fn rewrite_references(value: &mut Value, targets: &HashMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match v {
                    Value::String(s) if key == "reference" => {
                        if let Some(t) = targets.get(s.as_str()) {
                            *s = t.clone();
                        }
                    }
                    _ => rewrite_references(v, targets),
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| rewrite_references(v, targets)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_open_plain_and_gzipped_to_the_same_bytes() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("{{\"id\":\"{i}\"}}\n").into_bytes())
            .collect();
        std::fs::write(dir.path().join("a.ndjson"), &text).expect("write");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&text).expect("gzip");
        std::fs::write(dir.path().join("a.ndjson.gz"), gz.finish().expect("gzip")).expect("write");
        for name in ["a.ndjson", "a.ndjson.gz"] {
            let mut read = Vec::new();
            open(&dir.path().join(name))
                .expect("open")
                .read_to_end(&mut read)
                .expect("read");
            assert!(read == text, "{name} read back differently");
        }
    }
    use serde_json::json;

    #[test]
    fn bundle_references_resolve_to_type_and_id() {
        let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111", "resource": {"resourceType": "Patient"}},
            {"fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222", "resource": {"resourceType": "Encounter", "id": "e1",
              "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}}}
        ]});
        let entries = bundle_entries(bundle).expect("entries");
        assert_eq!(entries[0].1["id"], "11111111-1111-1111-1111-111111111111");
        assert_eq!(
            entries[1].1["subject"]["reference"],
            "Patient/11111111-1111-1111-1111-111111111111"
        );
    }

    /// The lines of every batch, with their numbers, as a reader would see them.
    fn numbered(batches: &[Batch]) -> Vec<(u64, String)> {
        let mut numbered = Vec::new();
        for batch in batches {
            let (origins, resources) = batch.resources();
            for (i, r) in resources.into_iter().enumerate() {
                let line = origins.get(i).line;
                numbered.push(match r {
                    crate::source::Resource::Text(t) => (line, t.to_owned()),
                    other => (line, format!("{other:?}")),
                });
            }
        }
        numbered
    }

    #[test]
    fn line_blocks_number_lines_alike_however_the_bytes_arrive() {
        let line = format!(
            "{{\"resourceType\":\"Patient\",\"id\":\"{}\"}}\n",
            "x".repeat(200)
        );
        let text = line.repeat(3 * CHUNK / line.len()) + "{\"last\":1}";
        let read = |piece: usize| {
            let mut blocks = LineBlocks::new(Arc::from("f"), Limits::DEFAULT);
            let mut out: Vec<Batch> = text
                .as_bytes()
                .chunks(piece)
                .filter_map(|bytes| blocks.push(bytes).expect("within the limits"))
                .collect();
            out.extend(blocks.finish());
            out
        };
        let whole = read(text.len());
        let pieces = read(7919);
        assert_eq!(
            whole.len(),
            2,
            "one push of everything: its complete lines, then the unfinished last one at the end"
        );
        assert!(pieces.len() >= 3, "blocks are handed on as bytes arrive");
        let lines = numbered(&pieces);
        assert_eq!(lines, numbered(&whole));
        assert_eq!(lines.len(), 3 * CHUNK / line.len() + 1);
        assert_eq!(lines.last().map(|(n, _)| *n), Some(lines.len() as u64));
    }

    /// Each line of `batches` by number, one rejected as longer than `max` as `None`.
    fn read_or_rejected(batches: &[Batch], max: usize) -> Vec<(u64, Option<String>)> {
        let rejected = format!("Unreadable(\"line longer than {max} bytes");
        numbered(batches)
            .into_iter()
            .map(|(n, text)| (n, (!text.starts_with(&rejected)).then_some(text)))
            .collect()
    }

    #[test]
    fn over_long_lines_are_rejected_by_number_wherever_they_end() {
        let limits = Limits {
            max_line_bytes: 1000,
            ..Limits::DEFAULT
        };
        let long = "x".repeat(5000);
        // Complete in one piece, cut across pieces, and unfinished at the end of the input.
        let text = format!("a\n{long}\nb\n{long}\n\nc\n{long}");
        for piece in [text.len(), 700, 64] {
            let mut blocks = LineBlocks::new(Arc::from("f"), limits);
            let mut out: Vec<Batch> = text
                .as_bytes()
                .chunks(piece)
                .filter_map(|bytes| blocks.push(bytes).expect("within the cap"))
                .collect();
            out.extend(blocks.finish());
            let want = vec![
                (1, Some("a".to_owned())),
                (2, None),
                (3, Some("b".to_owned())),
                (4, None),
                (6, Some("c".to_owned())),
                (7, None),
            ];
            assert_eq!(
                read_or_rejected(&out, 1000),
                want,
                "pieces of {piece} bytes"
            );
        }
    }

    #[test]
    fn a_line_with_no_end_is_skipped_in_bounded_memory_and_searched_once() {
        let limits = Limits {
            max_line_bytes: 1 << 20,
            ..Limits::DEFAULT
        };
        let mut blocks = LineBlocks::new(Arc::from("f"), limits);
        let piece = vec![b'x'; 64 << 10];
        let started = std::time::Instant::now();
        // 256 MB with no newline: a reader that rescans its buffer on every read is quadratic.
        for _ in 0..4096 {
            assert!(blocks.push(&piece).expect("within the cap").is_none());
            assert!(blocks.block.capacity() <= CHUNK + READ + piece.len());
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(blocks.push(b"\n{\"id\":1}\n").expect("cap").is_none());
        let out: Vec<Batch> = blocks.finish().into_iter().collect();
        assert_eq!(
            read_or_rejected(&out, 1 << 20),
            [(1, None), (2, Some("{\"id\":1}".to_owned()))]
        );
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_cap_with_the_file_and_line() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bomb.ndjson.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(b"{\"id\":1}\n{\"id\":2}\n").expect("gzip");
        let zeros = vec![b'0'; 1 << 20];
        for _ in 0..64 {
            gz.write_all(&zeros).expect("gzip");
        }
        std::fs::write(&file, gz.finish().expect("gzip")).expect("write");
        let limits = Limits {
            max_line_bytes: 1 << 20,
            max_decompressed_bytes: 16 << 20,
        };
        let mut lines = 0;
        let err = read(&file, limits, |batch| {
            lines += batch.resources().1.len();
            Ok(())
        })
        .expect_err("past the cap");
        let message = err.to_string();
        assert!(
            matches!(err, SourceError::TooLarge { line: 3, limit, .. } if limit == 16 << 20),
            "{message}"
        );
        assert!(
            message.contains("bomb.ndjson.gz expands to more than 16777216 bytes"),
            "{message}"
        );
        assert!(message.contains("--max-decompressed-bytes"), "{message}");
        // The same file read as a plain one is not held to the cap.
        let plain = dir.path().join("plain.ndjson");
        std::fs::write(&plain, vec![b'\n'; 17 << 20]).expect("write");
        read(&plain, limits, |_| Ok(())).expect("a plain file is what its size says");
    }

    #[test]
    fn links_to_directories_are_not_followed_and_a_file_is_listed_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).expect("mkdir");
        std::fs::write(sub.join("a.ndjson"), "{}\n").expect("write");
        std::os::unix::fs::symlink(dir.path(), sub.join("parent")).expect("link");
        std::os::unix::fs::symlink(&sub, dir.path().join("again")).expect("link");
        std::os::unix::fs::symlink(sub.join("a.ndjson"), dir.path().join("b.ndjson"))
            .expect("link");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join("z.ndjson"))
            .expect("link");
        std::fs::write(dir.path().join("elsewhere"), "{}\n").expect("write");
        let listed = list(dir.path()).expect("list");
        assert_eq!(
            listed,
            [dir.path().join("b.ndjson"), dir.path().join("z.ndjson")],
            "b.ndjson and sub/a.ndjson are one file, read once by its first path"
        );
    }

    #[test]
    fn entries_without_resource_are_refused() {
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "DELETE"}}]});
        assert!(
            bundle_entries(bundle)
                .expect_err("no resource")
                .contains("entry[0]")
        );
    }
}
