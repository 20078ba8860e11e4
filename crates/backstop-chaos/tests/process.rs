//! The gateway child process, with stand-in `backstop` binaries (shell
//! scripts): a rejected config is reported with the checker's output, a
//! gateway that never gets ready or dies is reported with its log, and no
//! child outlives its handle.

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backstop_chaos::{GatewayCommand, GatewayError, Stopped};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A directory of its own for each test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "backstop-chaos-process-{}-{test}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An executable shell script standing in for `backstop`.
fn script(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("backstop");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Whether the process has ended (gone, or a zombie waiting to be reaped).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn wait_ended(pid: u32) -> bool {
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        if ended(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ended(pid)
}

/// A loopback server answering every connection with `200 OK` (a ready
/// `/readyz`), for a bounded number of connections.
async fn ready_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..50 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await;
        }
    });
    addr
}

#[tokio::test]
async fn a_rejected_config_carries_the_checkers_output() {
    let dir = scratch("rejected");
    let binary = script(
        &dir,
        r#"echo "cfg.toml: scenarios.x.chain[1]: unknown model \"nope\"" >&2; exit 1"#,
    );
    let err = GatewayCommand::new(binary)
        .check(&dir.join("cfg.toml"))
        .await
        .unwrap_err();
    assert!(matches!(err, GatewayError::ConfigRejected { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("unknown model \"nope\""), "{text}");
    assert!(text.contains("cfg.toml"), "{text}");

    let ok = script(&dir, r#"echo "configuration OK""#);
    let report = GatewayCommand::new(ok)
        .check(&dir.join("cfg.toml"))
        .await
        .unwrap();
    assert!(report.contains("configuration OK"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_missing_binary_is_named() {
    let err = GatewayCommand::new("/nonexistent/backstop")
        .check(Path::new("cfg.toml"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/backstop"), "{err}");
}

#[tokio::test]
async fn a_gateway_that_prints_nothing_is_not_ready_and_is_killed() {
    let dir = scratch("silent");
    // Writes its pid where the test can find it, logs a line, then hangs.
    let pid_file = dir.join("pid");
    let binary = script(
        &dir,
        &format!(
            "echo $$ > {}; echo 'starting up' >&2; exec sleep 30",
            pid_file.display()
        ),
    );
    let started = Instant::now();
    let err = GatewayCommand::new(binary)
        .serve(
            &dir.join("cfg.toml"),
            &dir.join("gw.log"),
            Duration::from_millis(400),
        )
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    let text = err.to_string();
    assert!(matches!(err, GatewayError::NotReady { .. }), "{text}");
    assert!(
        text.contains("starting up"),
        "the log tail is quoted: {text}"
    );
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(wait_ended(pid), "the silent gateway {pid} was left running");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_gateway_that_dies_at_startup_is_reported_with_its_log() {
    let dir = scratch("dies");
    let binary = script(&dir, "echo 'cannot listen: address in use' >&2; exit 3");
    let err = GatewayCommand::new(binary)
        .serve(
            &dir.join("cfg.toml"),
            &dir.join("gw.log"),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, GatewayError::Exited { .. }), "{text}");
    assert!(text.contains("address in use"), "{text}");
    assert!(text.contains("exit status: 3"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_ready_gateway_stops_on_sigterm_and_a_dropped_one_is_killed() {
    let dir = scratch("ready");
    let addr = ready_server().await;
    // Prints the listening line for the stand-in /readyz, then waits.
    let binary = script(
        &dir,
        &format!("echo 'backstop listening on http://{addr}'; exec sleep 30"),
    );
    let command = GatewayCommand::new(binary);

    let gateway = command
        .serve(
            &dir.join("cfg.toml"),
            &dir.join("gw.log"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(gateway.addr(), addr);
    assert_eq!(gateway.base_url(), format!("http://{addr}/v1"));
    let pid = gateway.pid();
    let stopped = gateway.stop(Duration::from_secs(3)).await.unwrap();
    assert!(matches!(stopped, Stopped::Graceful(_)), "{stopped:?}");
    assert!(wait_ended(pid));

    let dropped = command
        .serve(
            &dir.join("cfg.toml"),
            &dir.join("gw2.log"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let pid = dropped.pid();
    assert!(!ended(pid));
    drop(dropped);
    assert!(wait_ended(pid), "a dropped gateway {pid} was left running");
    let _ = std::fs::remove_dir_all(&dir);
}
