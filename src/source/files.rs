//! Files on disk: a single file or a directory (searched recursively, in name order so runs
//! are reproducible) of `*.ndjson`, `*.ndjson.gz` and `*.json`. NDJSON is read (for `.gz`,
//! decompressed) and cut into blocks of complete lines by [`LineBlocks`], which Bulk Data
//! downloads streamed into the fold share; a `.json` file holds one resource
//! or a Bundle (collection, transaction, batch, searchset), whose `urn:uuid:` references are
//! resolved to `Type/id` before its entries go on. A line that is not UTF-8 becomes an
//! unreadable item, not an error, so the rest of the file is still read.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::read::MultiGzDecoder;
use serde_json::Value;

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
    /// The consumer stopped the read.
    #[error("reading stopped: {0}")]
    Stopped(String),
}

/// The input files under `path`, in a stable order.
pub fn list(path: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let io = |source| SourceError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    let mut dirs = vec![path.to_owned()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| SourceError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| SourceError::Io {
                path: dir.clone(),
                source,
            })?;
            let p = entry.path();
            if p.is_dir() {
                dirs.push(p);
            } else if is_input(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
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

/// Reads every input file under `path`, handing batches of items to `emit`. `emit` returning
/// an error stops the read.
pub fn read(
    path: &Path,
    mut emit: impl FnMut(Batch) -> Result<(), String>,
) -> Result<(), SourceError> {
    for file in list(path)? {
        let name: Arc<str> = Arc::from(file.display().to_string());
        if file.extension().is_some_and(|e| e == "json") {
            read_json(&file, &name, &mut emit)?;
        } else {
            read_ndjson(&file, &name, &mut emit)?;
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
    emit: &mut impl FnMut(Batch) -> Result<(), String>,
) -> Result<(), SourceError> {
    let opened = File::open(file).map_err(|source| SourceError::Io {
        path: file.to_owned(),
        source,
    })?;
    let mut raw = Readahead::new(opened);
    let lines = LineBlocks::new(name.clone());
    if is_gz(file) {
        let mut gz = MultiGzDecoder::new(raw);
        read_blocks(file, lines, |lines| lines.fill(&mut gz), emit)
    } else {
        read_blocks(file, lines, |lines| raw.fill(lines), emit)
    }
}

/// Hands every block of lines that `next` reads into `lines` to `emit`, the last one too.
fn read_blocks(
    file: &Path,
    mut lines: LineBlocks,
    mut next: impl FnMut(&mut LineBlocks) -> std::io::Result<(usize, Option<Batch>)>,
    emit: &mut impl FnMut(Batch) -> Result<(), String>,
) -> Result<(), SourceError> {
    loop {
        let (read, batch) = next(&mut lines).map_err(|source| SourceError::Io {
            path: file.to_owned(),
            source,
        })?;
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
/// with [`Readahead`].
pub fn open(file: &Path) -> std::io::Result<Box<dyn Read + Send>> {
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
/// next [`AHEAD`] bytes before they are wanted. The kernel's own readahead fetches a few
/// hundred kilobytes at a time and waits for each, so a file that is not in the page cache (a
/// fresh export, or one too large to stay there) is read at the disk's latency rather than its
/// bandwidth, while the parsing threads wait. Asking is cheap for pages already cached, and only
/// a hint: a kernel or file system that ignores it reads as before.
#[derive(Debug)]
pub struct Readahead {
    file: File,
    position: u64,
    asked_to: u64,
}

impl Readahead {
    /// Reads `file` from its start.
    pub fn new(file: File) -> Self {
        Self {
            file,
            position: 0,
            asked_to: 0,
        }
    }

    /// Reads the next bytes of the file into `lines` ([`LineBlocks::fill`]). The file itself,
    /// not this wrapper, is handed to the block: `std` fills a buffer's unused capacity from a
    /// `File` as it is, where any other reader gets it zeroed first (2 % of a run's time).
    pub fn fill(&mut self, lines: &mut LineBlocks) -> std::io::Result<(usize, Option<Batch>)> {
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

/// NDJSON cut, as its bytes arrive, into blocks of complete lines of about [`CHUNK`] bytes:
/// the one line reader of files on disk and of Bulk Data downloads streamed into the fold
/// ([`super::bulk`]), so both number lines and treat bytes that are not UTF-8 alike.
#[derive(Debug)]
pub struct LineBlocks {
    name: Arc<str>,
    block: Vec<u8>,
    first_line: u64,
}

impl LineBlocks {
    /// An empty reader of the file called `name` (the origin its lines are given).
    pub fn new(name: Arc<str>) -> Self {
        Self {
            name,
            block: Vec::new(),
            first_line: 1,
        }
    }

    /// Takes the next bytes; once a block's worth has arrived, its complete lines are handed
    /// back and the unfinished last line starts the next block.
    pub fn push(&mut self, bytes: &[u8]) -> Option<Batch> {
        self.reserve();
        self.block.extend_from_slice(bytes);
        self.cut()
    }

    /// [`Self::push`] for a reader at hand (a file): reads straight into the block, sparing a
    /// copy of every byte; the bytes read (0 at the end) and a block when one is complete.
    pub fn fill(&mut self, reader: &mut impl Read) -> std::io::Result<(usize, Option<Batch>)> {
        self.reserve();
        let want = CHUNK.saturating_sub(self.block.len()).max(READ);
        let read = reader.take(want as u64).read_to_end(&mut self.block)?;
        Ok((read, self.cut()))
    }

    fn reserve(&mut self) {
        if self.block.capacity() == 0 {
            self.block.reserve(CHUNK + READ);
        }
    }

    /// The complete lines of a full block; the unfinished last line starts the next.
    fn cut(&mut self) -> Option<Batch> {
        if self.block.len() < CHUNK {
            return None;
        }
        // A line longer than a block waits for its end.
        let cut = memchr::memrchr(b'\n', &self.block)? + 1;
        let mut next = Vec::with_capacity(CHUNK + READ);
        next.extend_from_slice(&self.block[cut..]);
        self.block.truncate(cut);
        let block = std::mem::replace(&mut self.block, next);
        Some(self.batch(block))
    }

    /// The rest, at the end of the input: its last line need not end in a newline.
    pub fn finish(mut self) -> Option<Batch> {
        let block = std::mem::take(&mut self.block);
        (!block.is_empty()).then(|| self.batch(block))
    }

    /// The lines read so far (handed back in blocks), for messages.
    pub fn lines(&self) -> u64 {
        self.first_line - 1
    }

    fn batch(&mut self, block: Vec<u8>) -> Batch {
        let first_line = self.first_line;
        let lines =
            memchr::memchr_iter(b'\n', &block).count() + usize::from(!block.ends_with(b"\n"));
        self.first_line += lines as u64;
        match String::from_utf8(block) {
            Ok(text) => Batch::Lines {
                file: self.name.clone(),
                first_line,
                lines,
                text,
            },
            Err(e) => Batch::Items(split_lines(&self.name, first_line, &e.into_bytes())),
        }
    }
}

/// A block with some bytes that are not UTF-8, line by line: the good lines as text, the bad
/// ones as unreadable, so the rest of the file is still read.
fn split_lines(name: &Arc<str>, first_line: u64, block: &[u8]) -> Vec<Item> {
    block
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(i, line)| {
            let payload = match std::str::from_utf8(line) {
                Ok(s) => Payload::Line(s.trim_end_matches('\r').to_owned()),
                Err(e) => Payload::Unreadable(format!(
                    "line is not UTF-8 (invalid byte at column {}); re-export the file as UTF-8",
                    e.valid_up_to() + 1
                )),
            };
            Item {
                origin: Origin {
                    file: name.clone(),
                    line: first_line + i as u64,
                    entry: false,
                },
                payload,
            }
        })
        .collect()
}

fn read_json(
    file: &Path,
    name: &Arc<str>,
    emit: &mut impl FnMut(Batch) -> Result<(), String>,
) -> Result<(), SourceError> {
    let bytes = std::fs::read(file).map_err(|source| SourceError::Io {
        path: file.to_owned(),
        source,
    })?;
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
            let mut blocks = LineBlocks::new(Arc::from("f"));
            let mut out: Vec<Batch> = text
                .as_bytes()
                .chunks(piece)
                .filter_map(|bytes| blocks.push(bytes))
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
