//! An opt-in feed of libtribe's log records into a node's event queue
//! (`TRIBE_EVENT_LOG`), so a host logs them with its own logger on its own
//! thread (collectd's `plugin_log`, Go's `slog`, ...).
//!
//! Records are routed by thread: each node's runtime threads, and a host
//! thread while it runs a call into that node, know the node's queue. A
//! global subscriber is installed the first time a node asks for logs, and
//! only if the process has none; records below every node's level are not
//! even formatted.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Once, Weak};

use tracing::field::{Field, Visit};
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::Layer;

use super::event::Body;
use super::mailbox::{Class, Mailbox};

/// Error records.
pub const TRIBE_LOG_ERROR: u32 = 1;
/// Warnings.
pub const TRIBE_LOG_WARN: u32 = 2;
/// Notable steps (joins, leaves, key changes).
pub const TRIBE_LOG_INFO: u32 = 3;
/// Details for debugging.
pub const TRIBE_LOG_DEBUG: u32 = 4;
/// Everything.
pub const TRIBE_LOG_TRACE: u32 = 5;

/// The most verbose level any node asked for (0: none).
static MAX_LEVEL: AtomicU8 = AtomicU8::new(0);
static INSTALL: Once = Once::new();

thread_local! {
    static SINK: RefCell<Option<Sink>> = const { RefCell::new(None) };
}

/// Where this thread's records go, and from which level on.
#[derive(Clone)]
pub(super) struct Sink {
    mailbox: Weak<Mailbox<Body>>,
    level: u32,
}

impl Sink {
    pub(super) fn new(mailbox: &Arc<Mailbox<Body>>, level: u32) -> Sink {
        Sink {
            mailbox: Arc::downgrade(mailbox),
            level,
        }
    }
}

/// Parses a level name: `"off"` is 0.
pub(super) fn parse_level(name: &str) -> Option<u32> {
    Some(match name {
        "off" => 0,
        "error" => TRIBE_LOG_ERROR,
        "warn" => TRIBE_LOG_WARN,
        "info" => TRIBE_LOG_INFO,
        "debug" => TRIBE_LOG_DEBUG,
        "trace" => TRIBE_LOG_TRACE,
        _ => return None,
    })
}

pub(super) fn level_name(level: u32) -> &'static str {
    match level {
        TRIBE_LOG_ERROR => "error",
        TRIBE_LOG_WARN => "warn",
        TRIBE_LOG_INFO => "info",
        TRIBE_LOG_DEBUG => "debug",
        _ => "trace",
    }
}

fn level_of(level: &Level) -> u32 {
    match *level {
        Level::ERROR => TRIBE_LOG_ERROR,
        Level::WARN => TRIBE_LOG_WARN,
        Level::INFO => TRIBE_LOG_INFO,
        Level::DEBUG => TRIBE_LOG_DEBUG,
        Level::TRACE => TRIBE_LOG_TRACE,
    }
}

/// Turns the feed on for a node at `level` (> 0).
pub(super) fn enable(level: u32) {
    let before = MAX_LEVEL.fetch_max(level as u8, Ordering::Relaxed);
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(Feed);
        // A host that set its own subscriber keeps it: no feed then.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
    if before < level as u8 {
        tracing::callsite::rebuild_interest_cache();
    }
}

/// Runs `f` with this thread's records going to `sink` (if any).
pub(super) fn with_sink<T>(sink: Option<&Sink>, f: impl FnOnce() -> T) -> T {
    /// Puts the previous sink back also when `f` panics (the panic is
    /// caught further up and the host goes on with this thread).
    struct Restore(Option<Sink>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            let _ = SINK.try_with(|s| *s.borrow_mut() = previous);
        }
    }
    let Some(sink) = sink else { return f() };
    let _restore = Restore(SINK.with(|s| s.replace(Some(sink.clone()))));
    f()
}

/// Makes this thread's records go to `sink` for good (runtime threads).
pub(super) fn set_thread_sink(sink: Sink) {
    SINK.with(|s| *s.borrow_mut() = Some(sink));
}

/// This thread's sink, for a thread it starts (see `crate::blocking`).
pub(super) fn inherit_sink() -> Box<dyn FnOnce() + Send> {
    let sink = SINK.with(|s| s.borrow().clone());
    Box::new(move || {
        super::node::block_async_signals();
        if let Some(sink) = sink {
            set_thread_sink(sink);
        }
    })
}

struct Feed;

#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let sep = if self.0.is_empty() { "" } else { " " };
            let _ = write!(self.0, "{sep}{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let sep = if self.0.is_empty() { "" } else { " " };
            let _ = write!(self.0, "{sep}{}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for Feed {
    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        level_of(metadata.level()) <= u32::from(MAX_LEVEL.load(Ordering::Relaxed))
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let level = level_of(event.metadata().level());
        let Some(mailbox) = SINK.with(|s| {
            s.borrow()
                .as_ref()
                .filter(|sink| level <= sink.level)
                .and_then(|sink| sink.mailbox.upgrade())
        }) else {
            return;
        };
        let mut message = Message::default();
        event.record(&mut message);
        let body = Body::Log {
            level,
            target: event.metadata().target().to_string(),
            message: message.0,
        };
        let _ = mailbox.push(body, Class::Droppable);
    }
}
