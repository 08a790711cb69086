//! The built-in `file` publisher: appends metric batches to a file, one
//! JSON object per line. One write at a time, on a blocking thread: a write
//! stuck in the file system (a hung network mount, a FIFO nobody reads)
//! holds that one thread, also after the publish that started it was given
//! up, and later batches wait for it a while, then fail naming the file.
//! (Each publish used to start a write of its own once the one before was
//! given up: stuck, they took a thread each, up to the runtime's 512.)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::batch::Metric;
use super::builtin::PluginError;

/// How long a batch waits for the write before it.
const WAIT_FOR_WRITE: Duration = Duration::from_secs(10);

/// Appends metrics to a file, one JSON object per line.
///
/// Calls on one publisher never interleave; share one publisher per path
/// rather than making several for the same file.
#[derive(Debug)]
pub struct FilePublisher {
    path: PathBuf,
    /// One permit: held by the write under way, on its thread.
    writing: Arc<Semaphore>,
    wait: Duration,
}

impl FilePublisher {
    /// A publisher appending to `path`; nothing is opened until a publish.
    pub fn new(path: impl Into<PathBuf>) -> FilePublisher {
        FilePublisher {
            path: path.into(),
            writing: Arc::new(Semaphore::new(1)),
            wait: WAIT_FOR_WRITE,
        }
    }

    /// The file appended to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the directory and the file as needed and opens it for
    /// appending, writing nothing: whether publishing can work at all.
    pub async fn check(&self) -> Result<(), PluginError> {
        self.append(Vec::new(), self.wait).await
    }

    /// Appends one line per metric, creating the directory and the file as
    /// needed, and returns the lines written. Metrics that would not decode
    /// (non-finite values and the like, see
    /// [`Metric::validate`]) are left out.
    pub async fn publish(&self, metrics: &[Metric]) -> Result<usize, PluginError> {
        self.publish_within(metrics, self.wait).await
    }

    /// [`FilePublisher::publish`], waiting at most `wait` (and 10 s) for
    /// the write before it: a handler gives what is left of its call's
    /// budget, so that the error naming the file reaches the caller
    /// rather than the call's timeout.
    pub async fn publish_within(
        &self,
        metrics: &[Metric],
        wait: Duration,
    ) -> Result<usize, PluginError> {
        let mut buf = Vec::new();
        let mut lines = 0;
        for metric in metrics.iter().filter(|m| m.validate().is_ok()) {
            // Serialise each line apart so a failure cannot leave half a line.
            if let Ok(line) = serde_json::to_vec(metric) {
                buf.extend_from_slice(&line);
                buf.push(b'\n');
                lines += 1;
            }
        }
        if lines == 0 {
            return Ok(0);
        }
        self.append(buf, wait.min(self.wait)).await?;
        Ok(lines)
    }

    /// Appends `bytes` on a blocking thread, after the write before it,
    /// waited for at most `wait`.
    async fn append(&self, bytes: Vec<u8>, wait: Duration) -> Result<(), PluginError> {
        let stuck = || PluginError {
            code: "io",
            message: format!(
                "{}: the write before this one has not finished in {:.1} s (a hung file \
                 system, or a FIFO nobody reads?); this batch is not written",
                self.path.display(),
                wait.as_secs_f64()
            ),
        };
        let permit = tokio::time::timeout(wait, self.writing.clone().acquire_owned())
            .await
            .map_err(|_| stuck())?
            .map_err(|_| stuck())?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let _writing = permit;
            append_to(&path, &bytes)
        })
        .await
        .map_err(|e| PluginError {
            code: "io",
            message: format!("{}: the write failed: {e}", self.path.display()),
        })?
    }
}

fn append_to(path: &Path, bytes: &[u8]) -> Result<(), PluginError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| PluginError::io(dir, &e))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| PluginError::io(path, &e))?;
    // A batch is written whole or not at all: a write cut short (a full
    // disk, a file-size limit) would leave some of its lines and half of
    // one, onto which the next batch's first line is appended, while its
    // caller hears that none was written. (Only a regular file can be cut
    // back; a FIFO or a terminal takes what it took.)
    let before = file
        .metadata()
        .ok()
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len());
    let Err(e) = file.write_all(bytes) else {
        return Ok(());
    };
    let mut failed = PluginError::io(path, &e);
    if let Some(len) = before {
        if let Err(cut) = file.set_len(len) {
            failed.message = format!(
                "{}; and what was written of this batch could not be taken back: {cut}",
                failed.message
            );
        }
    }
    Err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tribe-file-pub-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn read_lines(path: &Path) -> Vec<Metric> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn file_publisher_appends_lines_creating_the_directory() {
        let dir = scratch("file");
        let path = dir.join("deep/er/metrics.jsonl");
        let publisher = FilePublisher::new(&path);
        assert_eq!(publisher.path(), path);
        assert_eq!(publisher.publish(&[]).await, Ok(0));
        assert!(!path.exists());

        let batch = vec![
            Metric::new("a", 1.0, 1),
            Metric::new("b", f64::NAN, 2),
            Metric::new("c", 3.5, 3),
        ];
        assert_eq!(publisher.publish(&batch).await, Ok(2));
        assert_eq!(publisher.publish(&batch[..1]).await, Ok(1));
        let lines = read_lines(&path);
        let names: Vec<&str> = lines.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "c", "a"]);
        assert_eq!(lines[1], batch[2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_publishes_write_whole_lines() {
        let dir = scratch("concurrent");
        let path = dir.join("m.jsonl");
        let publisher = Arc::new(FilePublisher::new(&path));
        let long_tag = "v".repeat(200);
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let publisher = Arc::clone(&publisher);
            let long_tag = long_tag.clone();
            tasks.push(tokio::spawn(async move {
                let batch: Vec<Metric> = (0..300u64)
                    .map(|i| {
                        let mut m = Metric::new(format!("task{t}/m{i}"), i as f64, t);
                        m.tags.insert("pad".into(), long_tag.clone());
                        m
                    })
                    .collect();
                publisher.publish(&batch).await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), Ok(300));
        }
        let lines = read_lines(&path);
        assert_eq!(lines.len(), 16 * 300);
        // Each batch lands contiguously and in order.
        for chunk in lines.chunks(300) {
            let t = chunk[0].timestamp_ms;
            for (i, m) in chunk.iter().enumerate() {
                assert_eq!(m.name, format!("task{t}/m{i}"));
            }
        }
    }

    #[tokio::test]
    async fn file_publisher_reports_io_errors() {
        let dir = scratch("ioerr");
        std::fs::write(dir.join("blocker"), "not a directory").unwrap();
        let publisher = FilePublisher::new(dir.join("blocker/m.jsonl"));
        let err = publisher
            .publish(&[Metric::new("a", 1.0, 1)])
            .await
            .unwrap_err();
        assert_eq!(err.code, "io");
    }

    /// A write stuck in the file system (a FIFO nobody reads) holds one
    /// thread: publishes given up meanwhile never start a write of their
    /// own, a later one fails naming the file, and once the file takes
    /// writes again only the stuck batch lands.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_write_holds_one_thread_and_later_batches_fail_naming_the_file() {
        let dir = scratch("stuck");
        let path = dir.join("fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let publisher = FilePublisher {
            wait: Duration::from_millis(200),
            ..FilePublisher::new(&path)
        };
        let batch = [Metric::new("a", 1.0, 1)];
        for _ in 0..20 {
            let given_up =
                tokio::time::timeout(Duration::from_millis(20), publisher.publish(&batch)).await;
            assert!(given_up.is_err(), "a write to a FIFO nobody reads returned");
        }
        let err = publisher.publish(&batch).await.unwrap_err();
        assert_eq!(err.code, "io");
        assert!(
            err.message.contains("fifo") && err.message.contains("has not finished"),
            "{}",
            err.message
        );
        // A reader comes: the stuck write lands, and nothing else.
        let mut reader = std::fs::File::open(&path).unwrap();
        let mut got = String::new();
        reader.read_to_string(&mut got).unwrap();
        assert_eq!(got.lines().count(), 1, "{got}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
