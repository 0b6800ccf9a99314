//! A standalone ZooKeeper (Debian's `zookeeper` package, run with java) on a free loopback
//! port, its data in a tempdir; stopped on drop. The coordination service of an 18.16
//! ClickHouse cluster (replication and `ON CLUSTER` DDL).

use std::fs;
use std::sync::Mutex;
use std::time::Duration;

use tempfile::TempDir;

use super::{free_port, log_file, spawn, tail, tcp_roundtrip, tempdir, Proc};

/// The jars of Debian's `zookeeper` package (its manifest names the rest) and a logger.
const CLASSPATH: &str = "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar";

/// A running ZooKeeper.
pub struct ZooKeeper {
    /// Its client port on 127.0.0.1.
    pub port: u16,
    proc: Proc,
    dir: TempDir,
}

impl ZooKeeper {
    /// Whether Debian's `zookeeper` package is installed.
    pub fn installed() -> bool {
        std::path::Path::new("/usr/share/java/zookeeper.jar").exists()
    }

    /// Starts ZooKeeper and waits until it serves (`srvr` answers with its version: `ruok`
    /// answers before sessions are accepted, and ClickHouse 18.16 crashes on an `ON CLUSTER`
    /// query while it has no session). A tick of 500 ms allows sessions from 1 s, so a killed
    /// ClickHouse's session (and its replica's "active" mark) expires in seconds.
    pub fn start() -> ZooKeeper {
        assert!(
            Self::installed(),
            "ZooKeeper is not installed: apt-get install zookeeper (scripts/test.sh does)"
        );
        let dir = tempdir("zookeeper-");
        let port = free_port();
        let d = dir.path().display();
        let cfg = format!(
            "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={d}/data\nclientPort={port}\n\
             clientPortAddress=127.0.0.1\nadmin.enableServer=false\nmaxClientCnxns=0\n\
             4lw.commands.whitelist=ruok,stat,mntr,srvr\n"
        );
        fs::write(dir.path().join("zoo.cfg"), cfg).expect("write zoo.cfg");
        let out = dir.path().join("zookeeper.log");
        let args = [
            "-Xmx256m",
            "-cp",
            CLASSPATH,
            "org.apache.zookeeper.server.ZooKeeperServerMain",
            "zoo.cfg",
        ]
        .map(String::from);
        let child = spawn("java", &args, |c| {
            c.current_dir(dir.path())
                .stdout(log_file(&out))
                .stderr(log_file(&out));
        });
        let zk = ZooKeeper {
            port,
            proc: Proc(Mutex::new(Some(child))),
            dir,
        };
        let ready =
            || tcp_roundtrip(port, b"srvr").is_some_and(|r| r.contains("Zookeeper version"));
        let diag = || tail(&out, 30);
        zk.proc
            .wait_for("zookeeper", Duration::from_secs(60), ready, diag);
        zk
    }

    /// Its log, for a failing test's message.
    pub fn log(&self) -> String {
        tail(&self.dir.path().join("zookeeper.log"), 40)
    }
}
