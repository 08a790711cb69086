//! Crypto benchmark: what sealing and opening tribe traffic costs per
//! message, next to a plain copy of the same bytes.
//!
//! Rows: `seal_datagram` / `open_datagram` at 64 B, 512 B and 1400 B (gossip
//! datagram sizes), `StreamCipher::seal_in_place` / `open_in_place` at those
//! sizes and 64 KiB (a large stream frame), and the baseline "plaintext
//! copy" (the payload copied into a reused `Vec`) at every size. Then the
//! AEAD candidates side by side on the same buffers (`ring`, `aws-lc-rs`
//! when built with `--features aead-candidates`, the `chacha20poly1305`
//! crate with a key kept and sealing in place, and that crate as the
//! previous code used it, a cipher built per message), and the one-way
//! throughput of a real loopback stream next to the one-core seal rate,
//! with how busy the sending thread was. Each row runs about 0.3 s
//! after a calibration pass; all rows come from one run, so ratios between
//! them are fair. It prints a markdown table and never asserts on timings.
//!
//! ```text
//! cargo bench --bench crypto [--features aead-candidates] -- [--quick]
//! ```
//!
//! `--quick` runs about 10x fewer iterations (a smoke test; noisier numbers).
//! Progress goes to stderr, the table to stdout.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use tribe::crypto::{
    open_datagram, seal_datagram, Keyring, Role, SecretKey, StreamCipher, StreamHello,
    DATAGRAM_OVERHEAD, FRAME_OVERHEAD,
};

const USAGE: &str = "usage: crypto [--quick]";
/// Gossip datagram payload sizes: small, typical, near an Ethernet MTU.
const DATAGRAM_SIZES: [usize; 3] = [64, 512, 1400];
/// Stream frames: the datagram sizes plus one large frame.
const FRAME_SIZES: [usize; 4] = [64, 512, 1400, 64 * 1024];
/// Time per row in a full run.
const ROW_TIME: Duration = Duration::from_millis(300);
/// Frames sealed ahead of each timed batch of opens: bounded so 64 KiB
/// frames stay within a few MiB.
const OPEN_BATCH: u64 = 64;
const LABEL: &[u8] = b"bench tribe";

struct Row {
    op: &'static str,
    size: usize,
    iters: u64,
    elapsed: Duration,
}

impl Row {
    fn ns_per_op(&self) -> f64 {
        self.elapsed.as_nanos() as f64 / self.iters as f64
    }

    /// Plaintext megabytes (10^6 bytes) per second.
    fn mb_per_s(&self) -> f64 {
        self.size as f64 * 1e3 / self.ns_per_op()
    }
}

/// Runs `run(n)` (n operations, returning the time they took) with growing
/// n until a batch takes a tenth of `target`, then once more sized to
/// `target`. Returning the time lets a row leave its setup untimed.
fn measure(target: Duration, mut run: impl FnMut(u64) -> Duration) -> (u64, Duration) {
    let mut n = 1u64;
    let per_op = loop {
        let took = run(n);
        if took >= target / 10 || n >= 1 << 30 {
            break took.as_secs_f64() / n as f64;
        }
        n *= 2;
    };
    let iters = ((target.as_secs_f64() / per_op.max(1e-9)) as u64).max(1);
    (iters, run(iters))
}

fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 31 + 7) as u8).collect()
}

/// A ring of four keys whose primary is the last installed, so opening
/// walks the whole ring to find the key.
fn ring() -> Keyring {
    let mut ring = Keyring::new(SecretKey::generate());
    let mut last = ring.primary_id();
    for _ in 0..3 {
        let key = SecretKey::generate();
        last = key.id();
        let _ = ring.install(key);
    }
    let _ = ring.use_key(last);
    ring
}

/// A matching initiator/responder pair with fresh salts.
fn stream_pair(key: &SecretKey) -> (StreamCipher, StreamCipher) {
    let i = StreamHello::new(key.id()).salt;
    let r = StreamHello::new(key.id()).salt;
    (
        StreamCipher::new(key, Role::Initiator, &i, &r, LABEL),
        StreamCipher::new(key, Role::Responder, &i, &r, LABEL),
    )
}

fn bench_copy(target: Duration, size: usize) -> Row {
    let data = payload(size);
    let mut buf = Vec::with_capacity(size);
    let (iters, elapsed) = measure(target, |n| {
        let start = Instant::now();
        for _ in 0..n {
            buf.clear();
            buf.extend_from_slice(black_box(&data));
            black_box(&buf);
        }
        start.elapsed()
    });
    Row {
        op: "plaintext copy",
        size,
        iters,
        elapsed,
    }
}

fn bench_seal_datagram(target: Duration, size: usize) -> Row {
    let ring = ring();
    let data = payload(size);
    let mut out = Vec::with_capacity(size + DATAGRAM_OVERHEAD);
    let (iters, elapsed) = measure(target, |n| {
        let start = Instant::now();
        for _ in 0..n {
            out.clear();
            // A sender draws a fresh nonce per datagram, so it is timed too.
            seal_datagram(&ring, rand::random(), LABEL, black_box(&data), &mut out);
            black_box(&out);
        }
        start.elapsed()
    });
    Row {
        op: "seal_datagram",
        size,
        iters,
        elapsed,
    }
}

fn bench_open_datagram(target: Duration, size: usize) -> Row {
    let ring = ring();
    let mut sealed = Vec::new();
    seal_datagram(&ring, rand::random(), LABEL, &payload(size), &mut sealed);
    let (iters, elapsed) = measure(target, |n| {
        let start = Instant::now();
        for _ in 0..n {
            let opened = open_datagram(&ring, LABEL, black_box(&sealed));
            assert!(opened.is_ok(), "a genuine datagram must open");
            black_box(opened.ok());
        }
        start.elapsed()
    });
    Row {
        op: "open_datagram",
        size,
        iters,
        elapsed,
    }
}

fn bench_stream_seal(target: Duration, size: usize) -> Row {
    let (mut sender, _) = stream_pair(&SecretKey::generate());
    let data = payload(size);
    let mut buf = Vec::with_capacity(size + FRAME_OVERHEAD);
    let (iters, elapsed) = measure(target, |n| {
        let start = Instant::now();
        for _ in 0..n {
            // What a stream does per frame: body into its reused buffer,
            // sealed in place, tag appended.
            buf.clear();
            buf.extend_from_slice(black_box(&data));
            if let Ok(tag) = sender.seal_in_place(&mut buf) {
                buf.extend_from_slice(&tag);
            }
            black_box(&buf);
        }
        start.elapsed()
    });
    Row {
        op: "StreamCipher::seal_in_place",
        size,
        iters,
        elapsed,
    }
}

fn bench_stream_open(target: Duration, size: usize) -> Row {
    let (mut sender, mut receiver) = stream_pair(&SecretKey::generate());
    let data = payload(size);
    let mut frames: Vec<Vec<u8>> = Vec::with_capacity(OPEN_BATCH as usize);
    let (iters, elapsed) = measure(target, |n| {
        // Frames must open in order, so seal each batch ahead, untimed.
        let mut timed = Duration::ZERO;
        let mut left = n;
        while left > 0 {
            let batch = left.min(OPEN_BATCH);
            frames.clear();
            for _ in 0..batch {
                match sender.seal(&data) {
                    Ok(frame) => frames.push(frame),
                    Err(e) => panic!("sealing a bench frame: {e}"),
                }
            }
            let start = Instant::now();
            for frame in frames.iter_mut() {
                let opened = receiver.open_in_place(black_box(frame));
                assert!(opened.is_ok(), "frames opened in order must open");
                black_box(opened.ok());
            }
            timed += start.elapsed();
            left -= batch;
        }
        timed
    });
    Row {
        op: "StreamCipher::open_in_place",
        size,
        iters,
        elapsed,
    }
}

fn size_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// Tenths only where they matter (the copy rows).
fn ns(value: f64) -> String {
    if value.is_nan() {
        "-".into()
    } else if value < 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

fn main() {
    let quick = common::quick_flag(USAGE);
    let target = if quick { ROW_TIME / 10 } else { ROW_TIME };
    let begun = Instant::now();

    let mut rows = Vec::new();
    for &size in &FRAME_SIZES {
        eprintln!("{}: copy", size_label(size));
        rows.push(bench_copy(target, size));
        if DATAGRAM_SIZES.contains(&size) {
            eprintln!("{}: datagrams", size_label(size));
            rows.push(bench_seal_datagram(target, size));
            rows.push(bench_open_datagram(target, size));
        }
        eprintln!("{}: stream frames", size_label(size));
        rows.push(bench_stream_seal(target, size));
        rows.push(bench_stream_open(target, size));
    }

    println!(
        "Crypto cost per message ({} run, {:.1} s, {} cores; overhead {DATAGRAM_OVERHEAD} B per \
         datagram, {FRAME_OVERHEAD} B per frame)\n",
        if quick { "--quick" } else { "full" },
        begun.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!("| operation | payload | iterations | ns/op | MB/s | × copy |");
    println!("|---|---:|---:|---:|---:|---:|");
    for row in &rows {
        let copy = rows
            .iter()
            .find(|r| r.op == "plaintext copy" && r.size == row.size)
            .map_or(f64::NAN, Row::ns_per_op);
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.1} |",
            row.op,
            size_label(row.size),
            row.iters,
            ns(row.ns_per_op()),
            row.mb_per_s(),
            row.ns_per_op() / copy,
        );
    }
    println!(
        "\nMB = 10^6 plaintext bytes. seal_datagram includes drawing its random \
         nonce and appends to a reused Vec; seal_in_place copies the body into \
         a reused frame buffer first, as a stream does. The copy baseline \
         copies the payload into a reused Vec."
    );
    candidates(target);
    let seal_64k = rows
        .iter()
        .find(|r| r.op == "StreamCipher::seal_in_place" && r.size == 64 * 1024)
        .map_or(f64::NAN, Row::mb_per_s);
    tcp_streams(quick, seal_64k);
}

/// The AEAD candidates on the same buffers, in this run: ChaCha20-Poly1305
/// with a kept key sealing in place (the stream case), and XChaCha20 with
/// a key derived per message (the datagram case).
fn candidates(target: Duration) {
    use chacha20poly1305::aead::AeadInOut;
    use chacha20poly1305::{ChaCha20Poly1305, KeyInit, XChaCha20Poly1305};
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

    let key = [7u8; 32];
    let xnonce = [9u8; 24];
    let nonce = [0u8; 12];
    let ring_key = match UnboundKey::new(&CHACHA20_POLY1305, &key) {
        Ok(k) => LessSafeKey::new(k),
        Err(_) => {
            eprintln!("ring refused a 32-byte key");
            return;
        }
    };
    let rc_key = ChaCha20Poly1305::new(&key.into());
    println!("\nAEAD candidates, seal only, same buffers and run (ns/op)\n");
    println!(
        "| payload | ring, kept key | aws-lc-rs, kept key | chacha20poly1305, kept key | \
         chacha20poly1305, cipher per message | tribe XChaCha datagram (ring + HChaCha20) | \
         chacha20poly1305 XChaCha, per message |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for size in [64usize, 1400, 64 * 1024] {
        let data = payload(size);
        let mut buf = data.clone();
        let mut time = |f: &mut dyn FnMut(&mut [u8])| {
            let (iters, elapsed) = measure(target, |n| {
                let start = Instant::now();
                for _ in 0..n {
                    buf.copy_from_slice(&data);
                    f(black_box(&mut buf));
                }
                start.elapsed()
            });
            elapsed.as_nanos() as f64 / iters as f64
        };
        let ring_ns = time(&mut |b| {
            let nonce = Nonce::assume_unique_for_key(nonce);
            black_box(
                ring_key
                    .seal_in_place_separate_tag(nonce, Aad::from(LABEL), b)
                    .ok(),
            );
        });
        let kept_ns = time(&mut |b| {
            black_box(
                rc_key
                    .encrypt_inout_detached(&nonce.into(), LABEL, b.into())
                    .ok(),
            );
        });
        let fresh_ns = time(&mut |b| {
            let cipher = ChaCha20Poly1305::new(&key.into());
            black_box(
                cipher
                    .encrypt_inout_detached(&nonce.into(), LABEL, b.into())
                    .ok(),
            );
        });
        let ring = Keyring::new(SecretKey::from_bytes(key));
        let mut out = Vec::with_capacity(size + DATAGRAM_OVERHEAD);
        let tribe_x_ns = time(&mut |b| {
            out.clear();
            seal_datagram(&ring, xnonce, LABEL, b, &mut out);
            black_box(&out);
        });
        let rc_x_ns = time(&mut |b| {
            let cipher = XChaCha20Poly1305::new(&key.into());
            black_box(
                cipher
                    .encrypt_inout_detached(&xnonce.into(), LABEL, b.into())
                    .ok(),
            );
        });
        let aws_ns = aws_lc_seal_ns(&mut time, &key, nonce);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            size_label(size),
            ns(ring_ns),
            ns(aws_ns),
            ns(kept_ns),
            ns(fresh_ns),
            ns(tribe_x_ns),
            ns(rc_x_ns),
        );
    }
    println!(
        "\nEach time includes copying the payload into the buffer first. \
         aws-lc-rs is measured when built with `--features aead-candidates` \
         (it builds its C library; `-` otherwise)."
    );
}

/// Times one seal on the candidates' buffers, in ns per message.
type Timer<'a> = dyn FnMut(&mut dyn FnMut(&mut [u8])) -> f64 + 'a;

/// aws-lc-rs's ChaCha20-Poly1305 with a kept key, sealing in place, timed
/// by `time` on the candidates' buffers.
#[cfg(feature = "aead-candidates")]
fn aws_lc_seal_ns(time: &mut Timer<'_>, key: &[u8; 32], nonce: [u8; 12]) -> f64 {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
    let Ok(unbound) = UnboundKey::new(&CHACHA20_POLY1305, key) else {
        return f64::NAN;
    };
    let aws_key = LessSafeKey::new(unbound);
    time(&mut |b| {
        let nonce = Nonce::assume_unique_for_key(nonce);
        black_box(
            aws_key
                .seal_in_place_separate_tag(nonce, Aad::from(LABEL), b)
                .ok(),
        );
    })
}

#[cfg(not(feature = "aead-candidates"))]
fn aws_lc_seal_ns(_: &mut Timer<'_>, _: &[u8; 32], _: [u8; 12]) -> f64 {
    f64::NAN
}

/// One-way throughput of `tribe::stream` over a real loopback TCP connection,
/// plaintext and sealed, in the same run: what encryption costs end to end.
fn tcp_streams(quick: bool, seal_mb_s: f64) {
    // One worker for the receiver, the sender on this thread: one busy
    // thread per core, so the row does not hang on where tasks land.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("no tokio runtime: {e}");
            return;
        }
    };
    let total_bytes: usize = if quick { 32 << 20 } else { 256 << 20 };
    println!(
        "\nLoopback TCP stream, one way, {} MiB per row (plaintext vs sealed, same run; \
         one-core seal rate = the seal_in_place row at 64 KiB, {seal_mb_s:.0} MB/s)\n",
        total_bytes >> 20
    );
    println!(
        "| frame | plaintext MB/s | sealed MB/s | sealed / plaintext | sealed / one-core seal rate | sealed: sender busy |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for size in [1400usize, 64 * 1024] {
        // Three rounds, plaintext and sealed alternating; the median round
        // of each is printed (single rounds move by ±30 % on a 2-core VM,
        // with where the threads land).
        let mut rounds: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..3 {
            for (sealed, out) in rounds.iter_mut().enumerate() {
                let run = one_way(&runtime, size, total_bytes, sealed == 1);
                out.push(run.unwrap_or((f64::NAN, f64::NAN)));
            }
        }
        let [plain, sealed] = rounds.map(|mut r| {
            r.sort_by(|a, b| a.0.total_cmp(&b.0));
            r[r.len() / 2]
        });
        let vs_seal = if size == 64 * 1024 {
            format!("{:.2}", sealed.0 / seal_mb_s)
        } else {
            "-".into()
        };
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {vs_seal} | {:.0} % |",
            size_label(size),
            plain.0,
            sealed.0,
            sealed.0 / plain.0,
            sealed.1 * 100.0,
        );
    }
    println!(
        "\nSender busy = CPU time of the sending thread (it seals and writes) \
         over the sealed row's wall time: near 100 % means the sender, not \
         the receiver, sets the rate."
    );
}

/// One stream sending `total` bytes in frames of `size`: MB/s at the
/// receiver, and the share of the wall time the sending thread was busy.
fn one_way(
    runtime: &tokio::runtime::Runtime,
    size: usize,
    total: usize,
    sealed: bool,
) -> Option<(f64, f64)> {
    use tribe::stream::{self, Security};
    let security = if sealed {
        Security {
            keyring: Some(tribe::Keyring::new(tribe::SecretKey::generate())),
            encryption: tribe::Encryption::Require,
            label: String::new(),
        }
    } else {
        Security::plaintext("")
    };
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.ok()?;
        let addr = listener.local_addr().ok()?;
        let server_security = security.clone();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.ok()?;
            let (_sealer, mut opener) = stream::accept(&mut s, &server_security, 1 << 20)
                .await
                .ok()?;
            // Frames are lent, as the call streams read them.
            let mut got = 0usize;
            while let Ok(Some(body)) = opener.next_frame(&mut s).await {
                got += body.len();
            }
            Some(got)
        });
        let mut c = tokio::net::TcpStream::connect(addr).await.ok()?;
        let _ = c.set_nodelay(true);
        let (mut sealer, _opener) = stream::connect(&mut c, &security, 1 << 20).await.ok()?;
        let body = vec![0x5au8; size];
        let began = Instant::now();
        let cpu_before = thread_cpu_ns()?;
        // Small frames are batched into few writes; a 64 KiB frame is
        // larger than the buffer and goes to the socket as is, as a call
        // stream writes it.
        let mut w = tokio::io::BufWriter::with_capacity(32 * 1024, c);
        for _ in 0..total / size {
            sealer.write_frame(&mut w, &body).await.ok()?;
        }
        tokio::io::AsyncWriteExt::shutdown(&mut w).await.ok()?;
        let sender_ns = thread_cpu_ns()? - cpu_before;
        let got = server.await.ok()??;
        let secs = began.elapsed().as_secs_f64();
        Some((got as f64 / secs / 1e6, sender_ns as f64 / 1e9 / secs))
    })
}

/// CPU time this thread has run, in ns (`/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}
