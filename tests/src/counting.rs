//! The client side of the replay benchmarks: one `ami-mio` driver logged in to a
//! replay server, counting every event in a listener until the `ReplayDone` marker.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use ami_mio::{Driver, DriverOptions, Endpoint, ServerId, ServerSpec, WaitError};
use ami_proto::Config;

/// A logged-in driver with one server and a counting listener.
#[derive(Debug)]
pub struct CountingDriver {
    /// The driver; tick it until [`CountingDriver::done`].
    pub driver: Driver,
    /// Its one server.
    pub id: ServerId,
    count: Rc<Cell<u64>>,
    done: Rc<Cell<bool>>,
}

impl CountingDriver {
    /// Connects to the replay server at `addr` as server `key` and waits for the login.
    pub fn connect(addr: SocketAddr, key: &str) -> Result<CountingDriver, WaitError> {
        CountingDriver::connect_with(addr, key, DriverOptions::default())
    }

    /// [`CountingDriver::connect`] with driver options of the caller's.
    pub fn connect_with(
        addr: SocketAddr,
        key: &str,
        options: DriverOptions,
    ) -> Result<CountingDriver, WaitError> {
        let mut driver = Driver::with_options(options).expect("a poll");
        let id = driver
            .add_server(ServerSpec::new(
                Config::new(key, "admin", "secret"),
                Endpoint::new(addr.ip().to_string(), addr.port()),
            ))
            .expect("a server");
        let count = Rc::new(Cell::new(0u64));
        let done = Rc::new(Cell::new(false));
        let (counter, finished) = (count.clone(), done.clone());
        driver.on_any_event(move |event| {
            if event.name() == "ReplayDone" {
                finished.set(true);
            } else {
                counter.set(counter.get() + 1);
            }
        });
        driver.connect(id).expect("connect");
        driver.wait_ready(id, Duration::from_secs(5))?;
        Ok(CountingDriver {
            driver,
            id,
            count,
            done,
        })
    }

    /// Events counted so far (the marker excluded).
    pub fn count(&self) -> u64 {
        self.count.get()
    }

    /// Whether the `ReplayDone` marker arrived.
    pub fn done(&self) -> bool {
        self.done.get()
    }
}
