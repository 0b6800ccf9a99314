//! A test host on this machine: a network namespace joined to the host by a veth pair with a /30
//! of its own, so that a server inside it can be cut off by a real network fault. Taking the
//! link down leaves TCP connections half-open, as a NAT or firewall dropping a flow does: no FIN,
//! no RST, the peer simply stops answering.
//!
//! Needs root (`ip netns add`). Names carry the test process's pid and a sequence number, so
//! tests running side by side (and other processes on the machine) do not clash; the namespace
//! and its link are removed on drop, panics included, and those a killed test process left
//! behind are removed by the next one.

use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every namespace this module creates: `spwt-{pid}-{seq}`.
const PREFIX: &str = "spwt-";

/// A network namespace with a veth link to the host.
pub struct NetNs {
    /// Its name, for `ip netns exec`.
    pub name: String,
    /// The veth end on the host.
    pub host_if: String,
    /// The veth end inside the namespace.
    pub ns_if: String,
    /// The host's address on the link.
    pub host_addr: Ipv4Addr,
    /// The namespace's address on the link (what servers inside it bind).
    pub addr: Ipv4Addr,
}

/// Runs `ip args..`; the output, or what went wrong as text.
fn ip(args: &[&str]) -> Result<Output, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetNs {
    /// Creates a namespace with its link up: the host at `.1`, the namespace at `.2` of a
    /// /30 in 10.201.0.0/16 no interface of the host uses yet; loopback up inside. An error
    /// (not root, no iproute2) says why.
    pub fn create() -> Result<NetNs, String> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        remove_leftovers();
        let (pid, seq) = (std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let name = format!("{PREFIX}{pid}-{seq}");
        ip(&["netns", "add", &name])?;
        // Interface names hold 15 bytes: "spw" + the pid in hex (at most 6) + h/n + seq.
        let mut ns = NetNs {
            host_if: format!("spw{pid:x}h{seq}"),
            ns_if: format!("spw{pid:x}n{seq}"),
            name,
            host_addr: Ipv4Addr::UNSPECIFIED,
            addr: Ipv4Addr::UNSPECIFIED,
        };
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.ns_if,
        ])?;
        ip(&["link", "set", &ns.ns_if, "netns", &ns.name])?;
        (ns.host_addr, ns.addr) = ns.assign_addresses(pid.wrapping_mul(31).wrapping_add(seq))?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        ns.ip_in(&["link", "set", &ns.ns_if, "up"])?;
        ns.ip_in(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Gives the link a /30 unused on the host, trying blocks from `start` on.
    fn assign_addresses(&self, start: u32) -> Result<(Ipv4Addr, Ipv4Addr), String> {
        let used = String::from_utf8_lossy(&ip(&["-o", "-4", "addr", "show"])?.stdout).to_string();
        for i in 0..64 {
            let block = (start + i) % 16_384;
            let base = [10, 201, (block / 64) as u8, (block % 64 * 4) as u8];
            let host = Ipv4Addr::new(base[0], base[1], base[2], base[3] + 1);
            let addr = Ipv4Addr::new(base[0], base[1], base[2], base[3] + 2);
            if used.contains(&format!("inet {host}/")) || used.contains(&format!("inet {addr}/")) {
                continue;
            }
            let cidr = |a: Ipv4Addr| format!("{a}/30");
            if ip(&["addr", "add", &cidr(host), "dev", &self.host_if]).is_ok() {
                self.ip_in(&["addr", "add", &cidr(addr), "dev", &self.ns_if])?;
                return Ok((host, addr));
            }
        }
        Err("no free /30 in 10.201.0.0/16".into())
    }

    /// Runs `ip args..` inside the namespace.
    fn ip_in(&self, args: &[&str]) -> Result<Output, String> {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// What a command run inside the namespace starts with: `ip netns exec NAME`.
    pub fn prefix(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }

    /// `program args..` run inside the namespace (its stdin closed unless set again).
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Takes the namespace's end of the link down: nothing passes either way, and neither side's
    /// connections hear of it.
    pub fn link_down(&self) {
        self.ip_in(&["link", "set", &self.ns_if, "down"])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Brings the namespace's end of the link up again.
    pub fn link_up(&self) {
        self.ip_in(&["link", "set", &self.ns_if, "up"])
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for NetNs {
    /// Deleting one end of a veth pair deletes both; then the namespace.
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Removes the namespaces (and host links) of test processes that no longer run.
fn remove_leftovers() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some((pid, seq)) = name.strip_prefix(PREFIX).and_then(|r| r.split_once('-')) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = ip(&["link", "del", &format!("spw{pid:x}h{seq}")]);
        let _ = ip(&["netns", "del", name]);
    }
}

/// A namespace for a test, or None when the test is to be skipped: network namespaces need
/// root, and without them the test fails with a clear message unless `SPILLWAY_SKIP_NETNS=1`
/// says to skip it (then the skip is printed).
pub fn netns_or_skip(test: &str) -> Option<NetNs> {
    match NetNs::create() {
        Ok(ns) => Some(ns),
        Err(e) if std::env::var("SPILLWAY_SKIP_NETNS").is_ok_and(|v| v == "1") => {
            eprintln!(
                "SKIPPED {test}: network namespaces unavailable ({e}); SPILLWAY_SKIP_NETNS=1"
            );
            None
        }
        Err(e) => panic!(
            "{test} needs network namespaces (ip netns add, a veth pair): {e}. \
             Run the tests as root (or with CAP_NET_ADMIN and CAP_SYS_ADMIN), \
             or set SPILLWAY_SKIP_NETNS=1 to skip this test"
        ),
    }
}
