//! The outbox as a file: one JSON line per change (`put`, `done`, `retry`), appended and
//! synced before the change counts, read back at start. When most lines describe items that
//! are gone, the file is rewritten with the living items only (a new file, synced, renamed
//! over the old one). A torn last line (a crash mid-write) is ignored: its change had not
//! been acknowledged. The named values live beside it in `<path>.meta`, rewritten whole.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Item, OutboxError};

/// Rewrite once the file holds this many lines more than there are living items, and at
/// least four times as many.
const COMPACT_SLACK: usize = 1000;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Put(Item),
    Done(String),
    Retry {
        id: String,
        attempts: u32,
        due_ms: i64,
    },
}

pub struct FileOutbox {
    path: PathBuf,
    file: File,
    max_items: usize,
    /// Living items by id, and their order of arrival (oldest first).
    items: HashMap<String, (u64, Item)>,
    order: BTreeMap<u64, String>,
    next: u64,
    /// Lines in the file.
    lines: usize,
    /// Leases of claimed items (not written: after a restart everything is due).
    leased: HashMap<String, i64>,
    meta: BTreeMap<String, String>,
}

impl FileOutbox {
    /// Open (or create) the outbox at `path`, keeping at most `max_items`.
    pub fn open(path: &Path, max_items: usize) -> Result<FileOutbox, OutboxError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let mut items = HashMap::new();
        let mut order = BTreeMap::new();
        let mut next = 0;
        if let Ok(f) = File::open(path) {
            for line in BufReader::new(f).lines() {
                let Ok(line) = serde_json::from_str::<Line>(&line?) else {
                    continue; // a torn line: its change was never acknowledged
                };
                match line {
                    Line::Put(item) => {
                        if !items.contains_key(&item.id) {
                            order.insert(next, item.id.clone());
                            items.insert(item.id.clone(), (next, item));
                            next += 1;
                        }
                    }
                    Line::Done(id) => {
                        if let Some((n, _)) = items.remove(&id) {
                            order.remove(&n);
                        }
                    }
                    Line::Retry {
                        id,
                        attempts,
                        due_ms,
                    } => {
                        if let Some((_, item)) = items.get_mut(&id) {
                            item.attempts = attempts;
                            item.due_ms = due_ms;
                        }
                    }
                }
            }
        }
        let meta = std::fs::read(meta_path(path))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut outbox = FileOutbox {
            path: path.to_path_buf(),
            file: open_append(path)?,
            max_items,
            items,
            order,
            next,
            lines: 0,
            leased: HashMap::new(),
            meta,
        };
        // Start from a clean file (this also drops a torn tail).
        outbox.compact()?;
        Ok(outbox)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn put(&mut self, new: Vec<Item>) -> Result<Vec<Item>, OutboxError> {
        let mut added: Vec<Item> = Vec::new();
        for item in new {
            if !self.items.contains_key(&item.id) && !added.iter().any(|a| a.id == item.id) {
                added.push(item);
            }
        }
        let overflow = (self.items.len() + added.len()).saturating_sub(self.max_items);
        // More new items than fit at all: the oldest new ones go too.
        let from_new = overflow.saturating_sub(self.items.len());
        let mut bytes = Vec::new();
        let mut dropped = Vec::new();
        for _ in 0..overflow - from_new {
            let Some((_, id)) = self.order.pop_first() else {
                break;
            };
            if let Some((_, item)) = self.items.remove(&id) {
                bytes.extend(encode(&Line::Done(id.clone())));
                self.leased.remove(&id);
                dropped.push(item);
            }
        }
        dropped.extend(added.drain(..from_new));
        for item in &added {
            bytes.extend(encode(&Line::Put(item.clone())));
        }
        self.append(&bytes)?;
        for item in added {
            self.order.insert(self.next, item.id.clone());
            self.items.insert(item.id.clone(), (self.next, item));
            self.next += 1;
        }
        Ok(dropped)
    }

    pub fn claim(&mut self, dest: &str, now_ms: i64, max: usize, lease_ms: i64) -> Vec<Item> {
        let mut due: Vec<&(u64, Item)> = self
            .items
            .values()
            .filter(|(_, i)| i.dest == dest && i.due_ms <= now_ms)
            .filter(|(_, i)| self.leased.get(&i.id).is_none_or(|&until| until <= now_ms))
            .collect();
        due.sort_by_key(|(n, i)| (i.due_ms, *n));
        let claimed: Vec<Item> = due.into_iter().take(max).map(|(_, i)| i.clone()).collect();
        for i in &claimed {
            self.leased.insert(i.id.clone(), now_ms + lease_ms);
        }
        claimed
    }

    pub fn done(&mut self, id: &str) -> Result<(), OutboxError> {
        self.leased.remove(id);
        if !self.items.contains_key(id) {
            return Ok(());
        }
        self.append(&encode(&Line::Done(id.to_owned())))?;
        if let Some((n, _)) = self.items.remove(id) {
            self.order.remove(&n);
        }
        self.maybe_compact()
    }

    pub fn retry(&mut self, item: &Item) -> Result<(), OutboxError> {
        self.leased.remove(&item.id);
        if !self.items.contains_key(&item.id) {
            return Ok(()); // dropped meanwhile
        }
        self.append(&encode(&Line::Retry {
            id: item.id.clone(),
            attempts: item.attempts,
            due_ms: item.due_ms,
        }))?;
        if let Some((_, i)) = self.items.get_mut(&item.id) {
            i.attempts = item.attempts;
            i.due_ms = item.due_ms;
        }
        self.maybe_compact()
    }

    pub fn meta_get(&self, key: &str) -> Option<String> {
        self.meta.get(key).cloned()
    }

    pub fn meta_put(&mut self, values: Vec<(String, Option<String>)>) -> Result<(), OutboxError> {
        for (k, v) in values {
            match v {
                Some(v) => self.meta.insert(k, v),
                None => self.meta.remove(&k),
            };
        }
        let bytes = serde_json::to_vec(&self.meta).map_err(io::Error::other)?;
        replace(&meta_path(&self.path), &bytes)?;
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), OutboxError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.file.write_all(bytes)?;
        self.file.sync_data()?;
        self.lines += bytes.iter().filter(|&&b| b == b'\n').count();
        Ok(())
    }

    fn maybe_compact(&mut self) -> Result<(), OutboxError> {
        let live = self.items.len();
        if self.lines > live + COMPACT_SLACK && self.lines > 4 * live {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrite the file with the living items only, in their order.
    fn compact(&mut self) -> Result<(), OutboxError> {
        let mut bytes = Vec::new();
        for id in self.order.values() {
            if let Some((_, item)) = self.items.get(id) {
                bytes.extend(encode(&Line::Put(item.clone())));
            }
        }
        replace(&self.path, &bytes)?;
        self.file = open_append(&self.path)?;
        self.lines = self.items.len();
        Ok(())
    }
}

fn encode(line: &Line) -> Vec<u8> {
    // Items are plain data: encoding cannot fail.
    let mut v = serde_json::to_vec(line).unwrap_or_default();
    v.push(b'\n');
    v
}

fn meta_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".meta");
    p.into()
}

fn open_append(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Write `bytes` to a new file, sync it, rename it over `path`, sync the folder.
fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u32) -> Item {
        Item::new(
            "hooks",
            &format!("evt_{n}"),
            format!("{{\"n\":{n}}}"),
            n as i64,
        )
    }

    #[test]
    fn items_survive_a_reopen_until_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.jsonl");
        let mut o = FileOutbox::open(&path, 100).unwrap();
        o.put((0..5).map(item).collect()).unwrap();
        o.done("hooks|evt_1").unwrap();
        let mut retried = item(3);
        retried.attempts = 2;
        retried.due_ms = 9_000;
        o.retry(&retried).unwrap();
        o.meta_put(vec![("cursor".into(), Some("42".into()))])
            .unwrap();
        drop(o);
        // As if killed: a torn line at the end.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"done":"hooks|evt_"#).unwrap();
        drop(f);

        let mut o = FileOutbox::open(&path, 100).unwrap();
        assert_eq!(o.len(), 4);
        assert_eq!(o.meta_get("cursor").as_deref(), Some("42"));
        let due = o.claim("hooks", 1_000, 10, 60_000);
        let ids: Vec<_> = due.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["hooks|evt_0", "hooks|evt_2", "hooks|evt_4"]);
        // Leased: not handed out twice.
        assert!(o.claim("hooks", 1_000, 10, 60_000).is_empty());
        let later = o.claim("hooks", 10_000, 10, 60_000);
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].attempts, 2);
        assert!(o.claim("other", 10_000, 10, 60_000).is_empty());
    }

    #[test]
    fn a_full_outbox_drops_its_oldest_items() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.jsonl");
        let mut o = FileOutbox::open(&path, 3).unwrap();
        assert!(o.put((0..3).map(item).collect()).unwrap().is_empty());
        let dropped = o.put(vec![item(3), item(4)]).unwrap();
        let ids: Vec<_> = dropped.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["hooks|evt_0", "hooks|evt_1"]);
        assert_eq!(o.len(), 3);
        // The same id again is one item.
        assert!(o.put(vec![item(4)]).unwrap().is_empty());
        drop(o);
        let o = FileOutbox::open(&path, 3).unwrap();
        assert_eq!(o.len(), 3);
        // Never more new items than fit either.
        let mut o = o;
        let dropped = o.put((10..16).map(item).collect()).unwrap();
        assert_eq!(dropped.len(), 6);
        assert_eq!(o.len(), 3);
    }

    #[test]
    fn the_file_is_compacted_and_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.jsonl");
        let mut o = FileOutbox::open(&path, 100).unwrap();
        for n in 0..1200 {
            o.put(vec![item(n)]).unwrap();
            o.done(&format!("hooks|evt_{n}")).unwrap();
        }
        o.put(vec![item(9999)]).unwrap();
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines <= COMPACT_SLACK + 10, "{lines} lines");
        drop(o);
        let o = FileOutbox::open(&path, 100).unwrap();
        assert_eq!(o.len(), 1);
    }
}
