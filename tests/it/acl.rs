//! Least privilege, end to end: Redis runs with exactly the users of docs/acl.md (their `user`
//! lines parsed from the file, so the document and the test cannot drift) and a `default` user
//! that may only PING. Spillway, authenticated as those users, archives an alert and moves a
//! trade's log; then, one rule at a time, a permission is taken away and Spillway must fail at
//! start (or, for `INFO`, in `/readyz`) with a message naming the refusal and the rule to add.

use std::time::{Duration, Instant};

use common::trades::{self};
use common::{eventually, free_port, ClickHouseServer, RedisServer, Spillway};

const PASSWORD: &str = "acl-test-Pw9";
const ADMIN: [&str; 5] = ["--user", "admin", "--pass", "adminPw9", "--no-auth-warning"];
const WAIT: Duration = Duration::from_secs(60);

/// The `user` lines of docs/acl.md: name and rules (a selector `( ... )` is one rule).
fn doc_users() -> Vec<(String, Vec<String>)> {
    let doc = std::fs::read_to_string(common::repo_dir().join("docs/acl.md")).expect("docs/acl.md");
    let users: Vec<_> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("user "))
        .map(|l| {
            let mut words = rules(&l.replace("CHANGE-ME", PASSWORD));
            let name = words.remove(0);
            (name, words)
        })
        .collect();
    assert_eq!(users.len(), 4, "docs/acl.md lists four users");
    users
}

/// Splits ACL rules on spaces, keeping a parenthesised selector whole.
fn rules(line: &str) -> Vec<String> {
    let (mut out, mut depth) = (vec![String::new()], 0);
    for c in line.chars() {
        match c {
            ' ' if depth == 0 => out.push(String::new()),
            _ => {
                depth += (c == '(') as i32 - (c == ')') as i32;
                out.last_mut().unwrap().push(c);
            }
        }
    }
    out.retain(|w| !w.is_empty());
    out
}

/// `rules` without `rule`, looked for in the selector too.
fn without(rules_: &[String], rule: &str) -> Vec<String> {
    let mut found = false;
    let out = rules_
        .iter()
        .filter_map(|r| {
            if r == rule {
                found = true;
                return None;
            }
            if let Some(inner) = r.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
                let kept: Vec<String> = rules(inner).into_iter().filter(|w| w != rule).collect();
                found |= kept.len() < rules(inner).len();
                return Some(format!("({})", kept.join(" ")));
            }
            Some(r.clone())
        })
        .collect();
    assert!(found, "{rule} is not in {rules_:?}");
    out
}

/// `ACL SETUSER name reset rules..` as the admin user.
fn set_user(redis: &RedisServer, name: &str, rules: &[String]) {
    let mut args: Vec<&str> = ADMIN.to_vec();
    args.extend(["ACL", "SETUSER", name, "reset"]);
    args.extend(rules.iter().map(String::as_str));
    assert_eq!(redis.cli(&args), "OK");
}

/// A redis-server with an admin, the documented users, and a `default` user that may only PING.
fn acl_redis(users: &[(String, Vec<String>)]) -> RedisServer {
    let redis = RedisServer::start();
    redis.cli(&[
        "ACL",
        "SETUSER",
        "admin",
        "on",
        ">adminPw9",
        "~*",
        "&*",
        "+@all",
    ]);
    for (name, rules) in users {
        set_user(&redis, name, rules);
    }
    let mut args = ADMIN.to_vec();
    args.extend([
        "ACL",
        "SETUSER",
        "default",
        "resetkeys",
        "resetchannels",
        "-@all",
        "+ping",
    ]);
    redis.cli(&args);
    redis
}

fn url(redis: &RedisServer, user: &str) -> String {
    format!("redis://{user}:{PASSWORD}@127.0.0.1:{}", redis.port)
}

fn admin_url(redis: &RedisServer) -> String {
    format!("redis://admin:adminPw9@127.0.0.1:{}", redis.port)
}

struct Acl {
    rls: RedisServer,
    rtrs: RedisServer,
    ch: ClickHouseServer,
    users: Vec<(String, Vec<String>)>,
}

impl Acl {
    /// Both pipelines; RLS and RTRS as their users, RTS (the RLS server again) as the observer.
    fn toml(&self) -> String {
        format!(
            "[redis.rls]\nurl = \"{}\"\n\n[redis.rtrs]\nurl = \"{}\"\n\n[redis.rts]\nurl = \"{}\"\n\n\
             [clickhouse]\nurl = \"{}\"\ndatabase = \"tacl\"\n\n[metrics]\naddr = \"127.0.0.1:{}\"\n\n\
             [batch]\nmax_delay_ms = 100\n",
            url(&self.rls, "spillway-rls"),
            url(&self.rtrs, "spillway-rtrs"),
            url(&self.rls, "spillway-observe"),
            self.ch.url(),
            free_port()
        )
    }

    fn server(&self, user: &str) -> &RedisServer {
        if user == "spillway-rtrs" {
            &self.rtrs
        } else {
            &self.rls
        }
    }

    fn rules(&self, user: &str) -> &[String] {
        &self.users.iter().find(|(n, _)| n == user).unwrap().1
    }

    fn admin(&self, redis: &RedisServer, args: &[&str]) -> String {
        let mut all = ADMIN.to_vec();
        all.extend(args);
        redis.cli(&all)
    }
}

/// Waits for the process to exit; its log.
async fn exit_log(sp: &Spillway, within: Duration) -> String {
    let t0 = Instant::now();
    while sp.exit_status().is_none() {
        assert!(
            t0.elapsed() < within,
            "spillway still runs after {within:?}; log:\n{}",
            sp.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!sp.exit_status().unwrap().success(), "{}", sp.log());
    sp.log()
}

async fn readyz(sp: &Spillway) -> (u16, String) {
    let url = format!("http://127.0.0.1:{}/readyz", sp.metrics_port);
    match common::http_client(Duration::from_secs(5))
        .get(&url)
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_users_suffice_and_each_missing_rule_is_named() {
    let users = doc_users();
    let s = Acl {
        rls: acl_redis(&users),
        rtrs: acl_redis(&users),
        ch: ClickHouseServer::start(),
        users,
    };
    // The default user cannot do Spillway's work: the users of the document do it.
    let refused = s.rls.cli(&["MGET", "alert:x"]);
    assert!(refused.contains("NOPERM"), "{refused}");

    let mut sp = Spillway::start(&s.toml());
    sp.wait_ready(WAIT).await;
    s.admin(
        &s.rls,
        &[
            "SET",
            "alert:acl-1",
            "{\"message\":\"least privilege\"}",
            "EX",
            "3600",
        ],
    );
    let trade = trades::plan("acl", 1);
    trades::write_logs(&admin_url(&s.rls), &trade, 1, 1).await;
    trades::close_all(&admin_url(&s.rtrs), &trade, 1, 1).await;
    eventually(WAIT, "the alert and the trade's log archived", || async {
        s.ch.count("SELECT count() FROM tacl.alerts FINAL WHERE alert_id = 'acl-1'")
            .await
            == 1
            && s.ch
                .count("SELECT count() FROM tacl.trade_executions FINAL")
                .await
                == trades::total_entries(&trade)
    })
    .await;
    eventually(WAIT, "the log key removed from RLS", || async {
        s.admin(&s.rls, &["EXISTS", &trade[0].key()]) == "0"
    })
    .await;
    let (status, body) = readyz(&sp).await;
    assert_eq!(status, 200, "{body}");
    assert!(sp.terminate().success(), "{}", sp.log());
    assert!(!sp.log().contains(PASSWORD));

    // One rule taken away at a time: start fails naming it (and the rule to add).
    let cases = [
        ("spillway-rls", "+mget", "refused MGET for user spillway-rls: add `+mget`"),
        ("spillway-rls", "+scan", "refused SCAN for user spillway-rls: add `+scan`"),
        ("spillway-rls", "%R~alert:*", "refused the keys of MGET, TYPE for user spillway-rls: add `%R~alert:*`"),
        ("spillway-rls", "&__keyevent@0__:set", "refused the channels of SUBSCRIBE for user spillway-rls: add `&__keyevent@0__:set &__keyevent@0__:expired"),
        ("spillway-rls", "+rename", "refused RENAME for user spillway-rls: add `+rename`"),
        ("spillway-rls", "~{trade_execution:*", "refused the keys of TYPE, PERSIST, LLEN, STRLEN, LTRIM, LRANGE, GET, GETRANGE, DEL for user spillway-rls: add `~{trade_execution:*`"),
        ("spillway-rtrs", "+xautoclaim", "refused XAUTOCLAIM for user spillway-rtrs: add `+xautoclaim`"),
        ("spillway-rtrs", "+xinfo|groups", "refused XINFO GROUPS for user spillway-rtrs: add `+xinfo|groups`"),
        ("spillway-rtrs", "&trade_close", "refused the channels of SUBSCRIBE for user spillway-rtrs: add `&trade_close`"),
    ];
    for (user, rule, message) in cases {
        let t0 = Instant::now();
        set_user(s.server(user), user, &without(s.rules(user), rule));
        let sp = Spillway::start(&s.toml());
        let log = exit_log(&sp, Duration::from_secs(30)).await;
        assert!(log.contains(message), "without {rule}: {log}");
        assert!(log.contains("docs/acl.md"), "{log}");
        assert!(!log.contains(PASSWORD), "{log}");
        set_user(s.server(user), user, s.rules(user));
        println!("without {rule}: failed at start in {:?}", t0.elapsed());
        for line in log
            .lines()
            .filter(|l| l.contains("refused") || l.contains("fix: ACL"))
        {
            println!("  {line}");
        }
    }

    // INFO is not essential: Spillway runs, and /readyz names the refusal.
    let user = "spillway-observe";
    set_user(&s.rls, user, &without(s.rules(user), "+info"));
    let sp = Spillway::start(&s.toml());
    let want = "Redis rts refused INFO for user spillway-observe: add `+info` to its ACL";
    eventually(WAIT, "/readyz names the INFO refusal", || async {
        let (status, body) = readyz(&sp).await;
        status == 503 && body.contains(want)
    })
    .await;
    set_user(&s.rls, user, s.rules(user));
    eventually(WAIT, "/readyz ready once +info is back", || async {
        readyz(&sp).await.0 == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replication_user_suffices_and_a_missing_rule_is_named() {
    let users = doc_users();
    let rls = acl_redis(&users);
    let ch = ClickHouseServer::start();
    let dir = crate::replication::pipelines();
    let user = "spillway-replication";
    let toml = || {
        format!(
            "pipelines_dir = \"{}\"\npipelines = [\"alerts\"]\n\n[redis.rls]\nurl = \"{}\"\n\n\
             [clickhouse]\nurl = \"{}\"\ndatabase = \"taclrepl\"\n\n[metrics]\n\
             addr = \"127.0.0.1:{}\"\n\n[batch]\nmax_delay_ms = 100\n",
            dir.path().display(),
            url(&rls, user),
            ch.url(),
            free_port()
        )
    };
    let mut sp = Spillway::start(&toml());
    sp.wait_ready(WAIT).await;
    let mut set = ADMIN.to_vec();
    set.extend([
        "SET",
        "alert:acl-r",
        "{\"message\":\"as a replica\"}",
        "EX",
        "3600",
    ]);
    rls.cli(&set);
    let mut del = ADMIN.to_vec();
    del.extend(["DEL", "alert:acl-r"]);
    eventually(WAIT, "the alert archived", || async {
        ch.count("SELECT count() FROM taclrepl.alerts FINAL WHERE alert_id = 'acl-r'")
            .await
            == 1
    })
    .await;
    rls.cli(&del);
    eventually(WAIT, "its deletion named by its notification", || async {
        ch.count("SELECT count() FROM taclrepl.alert_events WHERE event = 'deleted'")
            .await
            == 1
    })
    .await;
    assert!(sp.terminate().success(), "{}", sp.log());
    assert!(!sp.log().contains(PASSWORD));
    let rules = &users.iter().find(|(n, _)| n == user).unwrap().1;
    for rule in ["+psync", "+replconf"] {
        set_user(&rls, user, &without(rules, rule));
        let sp = Spillway::start(&toml());
        let log = exit_log(&sp, Duration::from_secs(30)).await;
        assert!(log.contains("NOPERM"), "without {rule}: {log}");
        assert!(log.contains("+psync +replconf"), "without {rule}: {log}");
        assert!(!log.contains(PASSWORD), "{log}");
        set_user(&rls, user, rules);
    }
}
