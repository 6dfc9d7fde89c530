//! Heap use of the driver's tick, counted by a global allocator on the driver's
//! thread: an idle tick allocates nothing, and a tick that reads events allocates a
//! bounded number of times per event (the message itself), not per read or per tick.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ami_mio::{Driver, Endpoint, ServerSpec};
use ami_proto::Config;

/// Counts the allocations made on the current thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to `System`; the counter is a thread-local `Cell`
// with a const initializer, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// A server that logs the client in, then writes `batch` events each time it is told
/// to on `go`.
fn server(batch: usize, go: mpsc::Receiver<()>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        writer
            .write_all(b"Asterisk Call Manager/11.0.0\r\n")
            .unwrap();
        let mut id = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 {
                return;
            }
            if let Some(v) = line.trim_end().strip_prefix("ActionID: ") {
                id = v.to_owned();
            }
            if line == "\r\n" {
                break;
            }
        }
        write!(
            writer,
            "Response: Success\r\nActionID: {id}\r\nMessage: Authentication accepted\r\n\r\n"
        )
        .unwrap();
        let mut seq = 0;
        while go.recv().is_ok() {
            let mut burst = String::new();
            for _ in 0..batch {
                burst.push_str(&format!(
                    "Event: Hangup\r\nPrivilege: call,all\r\nChannel: PJSIP/100-{seq:08}\r\nCause: 16\r\nCause-txt: Normal Clearing\r\n\r\n"
                ));
                seq += 1;
            }
            writer.write_all(burst.as_bytes()).unwrap();
        }
    });
    addr
}

#[test]
fn idle_ticks_allocate_nothing_and_reads_allocate_per_event_only() {
    const BATCH: usize = 2_000;
    let (go, bursts) = mpsc::channel();
    let addr = server(BATCH, bursts);
    let mut driver = Driver::new().unwrap();
    let mut config = Config::new("alloc", "admin", "secret");
    config.heartbeat_interval = Duration::ZERO;
    let id = driver
        .add_server(ServerSpec::new(
            config,
            Endpoint::new(addr.ip().to_string(), addr.port()),
        ))
        .unwrap();
    let seen = Rc::new(Cell::new(0usize));
    let counter = seen.clone();
    let names = Rc::new(RefCell::new(0usize));
    let lengths = names.clone();
    driver.on_any_event(move |event| {
        counter.set(counter.get() + 1);
        *lengths.borrow_mut() += event.name().len();
    });
    driver.connect(id).unwrap();
    driver.wait_ready(id, Duration::from_secs(10)).unwrap();

    // Warm up: one burst read and delivered, so that every buffer has its size.
    let deliver = |driver: &mut Driver, target: usize| {
        let started = Instant::now();
        while seen.get() < target {
            assert!(started.elapsed() < Duration::from_secs(30), "events lost");
            driver.tick_all(Duration::from_millis(100));
        }
    };
    go.send(()).unwrap();
    deliver(&mut driver, BATCH);
    for _ in 0..10 {
        driver.tick_all(Duration::ZERO);
    }

    // Idle ticks: nothing to read, nothing to write, no timer due.
    let before = allocations();
    for _ in 0..1_000 {
        driver.tick_all(Duration::ZERO);
    }
    let idle = allocations() - before;
    assert_eq!(idle, 0, "1,000 idle ticks allocated {idle} times");

    // Reading: the same burst again, in as many ticks and reads as it takes.
    let before = allocations();
    go.send(()).unwrap();
    deliver(&mut driver, 2 * BATCH);
    let per_event = (allocations() - before) as f64 / BATCH as f64;
    eprintln!("{per_event:.2} allocations per event read and delivered");
    // One: the message's own buffer (its header table shares it); nothing per read
    // or per tick. A little slack for a buffer that still had to grow.
    assert!(per_event <= 1.2, "{per_event:.2} allocations per event");
    assert!(*names.borrow() > 0);
}
