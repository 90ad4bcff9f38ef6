//! `seatbroker run`: holds a seat while a command runs, through the engine client
//! library ([`crate::engine_client`]). Acquire (printing the queue position to standard
//! error while waiting), run COMMAND with the lease in its environment, forward SIGINT
//! and SIGTERM to it, and release the seat once it exits; when the seat is lost, stop
//! COMMAND (SIGTERM, SIGKILL after `--grace`) and exit with a status that says why.
//! A broker briefly unreachable does not disturb COMMAND: the library reconnects and
//! re-attaches the seat while its TTL runs.

use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use tokio::process::Child;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tonic::Code;

use super::commands::{ClientArgs, ProductArg, RunArgs};
use super::failure::Failure;
use super::output;
use crate::engine_client::{
    ClientOptions, ConnectError, EngineClient, PendingSeat, Seat, SeatLost,
};
use crate::proto::Product;

/// Exit status when COMMAND could not be started, as shells use them.
const EXIT_COMMAND_NOT_EXECUTABLE: u8 = 126;
const EXIT_COMMAND_NOT_FOUND: u8 = 127;
/// How long the release after COMMAND's exit may take before `run` exits anyway (the
/// seat then ends at its deadline).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// Signals received and not yet forwarded (a burst of Ctrl-C beyond it waits).
const SIGNALS_QUEUED_MAX: usize = 16;

/// Runs `seatbroker run`; the exit code is COMMAND's, or one of `failure`'s.
pub async fn run(client: ClientArgs, args: RunArgs) -> ExitCode {
    match hold_seat_while_running(&client, args).await {
        Ok(code) => code,
        Err(failure) => {
            output::failure(client.json, &failure);
            ExitCode::from(failure.exit_code())
        }
    }
}

async fn hold_seat_while_running(client: &ClientArgs, args: RunArgs) -> Result<ExitCode, Failure> {
    let engine = connect(client).await?;
    let mut signals = forwarded_signals()?;
    let seat = tokio::select! {
        seat = acquire(&engine, &args) => seat?,
        // Dropping the pending acquire cancels it.
        Some(signal) = signals.recv() => return Ok(ExitCode::from(128 + signal as u8)),
    };
    let mut child = match spawn(&args, &seat) {
        Ok(child) => child,
        Err(code) => {
            release(seat).await;
            return Ok(ExitCode::from(code));
        }
    };
    match supervise(&mut child, seat.lost(), &mut signals, args.grace).await {
        Ended::Exited(code) => {
            release(seat).await;
            Ok(ExitCode::from(code))
        }
        Ended::SeatLost(lost) => Err(Failure::SeatLost(lost)),
    }
}

/// How COMMAND's run ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// COMMAND exited by itself (or after a forwarded signal): its status.
    Exited(u8),
    /// The seat was lost; COMMAND was stopped.
    SeatLost(SeatLost),
}

/// Waits for `child` to exit, forwarding each signal of `signals` to it; when `lost`
/// resolves first, stops it (SIGTERM, SIGKILL after `grace`).
async fn supervise(
    child: &mut Child,
    lost: impl Future<Output = SeatLost>,
    signals: &mut mpsc::Receiver<libc::c_int>,
    grace: Duration,
) -> Ended {
    let pid = child.id().map(|pid| pid as libc::pid_t);
    tokio::pin!(lost);
    loop {
        tokio::select! {
            status = child.wait() => return Ended::Exited(exit_code_of(status)),
            Some(signal) = signals.recv() => send_signal(pid, signal),
            lost = &mut lost => {
                eprintln!("seatbroker run: the seat was lost ({lost}); stopping COMMAND");
                stop(child, pid, grace).await;
                return Ended::SeatLost(lost);
            }
        }
    }
}

async fn connect(client: &ClientArgs) -> Result<EngineClient, Failure> {
    let Some(key) = client.key.as_deref() else {
        let message = "`run` needs a member's API key: --key or SEATBROKER_KEY";
        return Err(Failure::Usage(message.into()));
    };
    let mut options = ClientOptions::new(client.addrs(), key);
    options.tls = client.tls_files();
    options.connect_timeout = client.connect_timeout;
    EngineClient::connect(options)
        .await
        .map_err(|error| match error {
            ConnectError::NoAddress => Failure::Usage("--addr names no address".into()),
            ConnectError::Client(error) => super::client::connect_failure(error),
            ConnectError::Refused { status, .. } => Failure::from(status),
        })
}

/// Acquires the seat, printing the queue position to standard error while it waits.
async fn acquire(engine: &EngineClient, args: &RunArgs) -> Result<Seat, Failure> {
    let product = match args.product {
        ProductArg::Kse => Product::Kse,
        ProductArg::Kre => Product::Kre,
    };
    let mut acquire = engine
        .acquire(product)
        .hostname(args.hostname.clone().unwrap_or_else(this_hostname))
        .label(args.label.clone())
        .wait(args.wait.unwrap_or(Duration::ZERO));
    if let Some(engine_id) = &args.engine_id {
        acquire = acquire.engine_id(engine_id.clone());
    }
    let pending = acquire.start().await.map_err(Failure::from)?;
    let printing = tokio::spawn(print_queue_positions(&pending));
    let answer = pending.seat().await;
    printing.abort();
    answer.map_err(|status| match status.code() {
        Code::ResourceExhausted
        | Code::DeadlineExceeded
        | Code::PermissionDenied
        | Code::FailedPrecondition => Failure::NoSeat(status),
        _ => Failure::from(status),
    })
}

/// Prints each new queue position of `pending` to standard error.
fn print_queue_positions(pending: &PendingSeat) -> impl Future<Output = ()> + use<> {
    let mut positions = pending.queue_position();
    async move {
        while positions.changed().await.is_ok() {
            let position = *positions.borrow_and_update();
            if let Some(at) = position {
                eprintln!(
                    "seatbroker run: waiting for a seat: position {} of {} in the queue",
                    at.position, at.queue_length
                );
            }
        }
    }
}

/// Starts COMMAND with the lease in its environment; on failure, the shell's status
/// for it (126 not executable, 127 not found), with the reason on standard error.
fn spawn(args: &RunArgs, seat: &Seat) -> Result<Child, u8> {
    let lease = seat.lease();
    let (program, arguments) = args.command.split_first().expect("clap requires COMMAND");
    let mut command = tokio::process::Command::new(program);
    command
        .args(arguments)
        .env("SEATBROKER_LEASE_ID", &lease.lease_id)
        .env("SEATBROKER_LEASE_GENERATION", lease.generation.to_string())
        .env(
            "SEATBROKER_LEASE_EXPIRES_AT",
            output::time(lease.expires_at_unix_ms),
        )
        .env(
            "SEATBROKER_LEASE_EXPIRES_AT_UNIX_MS",
            lease.expires_at_unix_ms.to_string(),
        )
        .env("SEATBROKER_LEASE_TTL_MS", lease.ttl_ms.to_string())
        .env("SEATBROKER_PRODUCT", output::product_name(lease.product))
        .env("SEATBROKER_ENGINE_ID", &lease.engine_id);
    command.spawn().map_err(|error| {
        let program = program.to_string_lossy();
        eprintln!("seatbroker run: cannot run {program}: {error}");
        match error.kind() {
            std::io::ErrorKind::NotFound => EXIT_COMMAND_NOT_FOUND,
            _ => EXIT_COMMAND_NOT_EXECUTABLE,
        }
    })
}

/// COMMAND's status as a shell reports it: its exit code, or 128 + the signal that
/// ended it.
fn exit_code_of(status: std::io::Result<ExitStatus>) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => code as u8,
            (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
            (None, None) => 1,
        },
        Err(error) => {
            eprintln!("seatbroker run: cannot wait for COMMAND: {error}");
            1
        }
    }
}

/// SIGTERM to COMMAND, SIGKILL if it has not exited after `grace`.
async fn stop(child: &mut Child, pid: Option<libc::pid_t>, grace: Duration) {
    send_signal(pid, libc::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        eprintln!(
            "seatbroker run: COMMAND did not exit within {} of SIGTERM; sending SIGKILL",
            humantime::format_duration(grace)
        );
        let _ = child.kill().await;
    }
}

fn send_signal(pid: Option<libc::pid_t>, signal: libc::c_int) {
    if let Some(pid) = pid {
        // SAFETY: kill(2) has no memory effects; `pid` is our child, not yet reaped
        // (we reap it only through `child.wait()`, after which we never signal).
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Releases the seat, waiting at most [`RELEASE_TIMEOUT`].
async fn release(seat: Seat) {
    match tokio::time::timeout(RELEASE_TIMEOUT, seat.release()).await {
        Ok(Ok(())) => {}
        Ok(Err(status)) => eprintln!(
            "seatbroker run: the release failed ({}: {}); the seat ends at its deadline",
            crate::client::code_name(status.code()),
            status.message()
        ),
        Err(_) => eprintln!(
            "seatbroker run: the broker did not confirm the release in time; the seat ends at its deadline"
        ),
    }
}

/// This host's name, as the kernel has it (empty when unknown).
fn this_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

/// SIGINT and SIGTERM, as they arrive, to forward to COMMAND (from a task that
/// listens for them while `run` lives).
fn forwarded_signals() -> Result<mpsc::Receiver<libc::c_int>, Failure> {
    let install = |kind| {
        signal(kind)
            .map_err(|error| Failure::Configuration(format!("cannot handle signals: {error}")))
    };
    let mut interrupt = install(SignalKind::interrupt())?;
    let mut terminate = install(SignalKind::terminate())?;
    let (sender, receiver) = mpsc::channel(SIGNALS_QUEUED_MAX);
    tokio::spawn(async move {
        loop {
            let signal = tokio::select! {
                _ = interrupt.recv() => libc::SIGINT,
                _ = terminate.recv() => libc::SIGTERM,
            };
            if sender.send(signal).await.is_err() {
                return;
            }
        }
    });
    Ok(receiver)
}

#[cfg(test)]
mod tests {
    //! COMMAND's supervision with a real child process and a seat loss or signal
    //! given by the test (the seat and the broker are `tests/it/run_command.rs`'s).

    use std::process::Stdio;

    use tokio::io::{AsyncBufReadExt, BufReader};

    use super::*;
    use crate::engine_client::LostReason;

    /// A shell child running `script`, once it has printed its first line (so its
    /// traps are installed).
    async fn child(script: &str) -> Child {
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", script])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start sh");
        let stdout = child.stdout.take().expect("piped");
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .await
            .expect("read");
        assert_eq!(first.trim(), "ready");
        child
    }

    fn terminated() -> SeatLost {
        SeatLost {
            reason: LostReason::Terminated,
            message: "an admin ended it".into(),
        }
    }

    const BOUND: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn commands_own_status_passes_through() {
        let mut child = child("echo ready; exit 7").await;
        let (_keep, mut signals) = mpsc::channel(1);
        let never_lost = std::future::pending();
        let ended = supervise(&mut child, never_lost, &mut signals, BOUND);
        let ended = tokio::time::timeout(BOUND, ended).await.expect("bounded");
        assert_eq!(ended, Ended::Exited(7));
    }

    #[tokio::test]
    async fn signals_are_forwarded_to_command() {
        let script = "trap 'exit 9' TERM; echo ready; while :; do sleep 0.05; done";
        let mut child = child(script).await;
        let (forward, mut signals) = mpsc::channel(1);
        forward.send(libc::SIGTERM).await.expect("queued");
        let never_lost = std::future::pending();
        let ended = supervise(&mut child, never_lost, &mut signals, BOUND);
        let ended = tokio::time::timeout(BOUND, ended).await.expect("bounded");
        assert_eq!(ended, Ended::Exited(9), "COMMAND's trap ran");
    }

    #[tokio::test]
    async fn a_lost_seat_sends_sigterm_to_command() {
        let script = "trap 'exit 3' TERM; echo ready; while :; do sleep 0.05; done";
        let mut child = child(script).await;
        let (_keep, mut signals) = mpsc::channel(1);
        let lost = async { terminated() };
        let ended = supervise(&mut child, lost, &mut signals, BOUND);
        let ended = tokio::time::timeout(BOUND, ended).await.expect("bounded");
        assert_eq!(ended, Ended::SeatLost(terminated()));
        let status = child.try_wait().expect("reaped").expect("exited");
        assert_eq!(
            status.code(),
            Some(3),
            "COMMAND exited from its SIGTERM trap"
        );
    }

    #[tokio::test]
    async fn a_command_that_ignores_sigterm_gets_sigkill_after_the_grace() {
        use std::os::unix::process::ExitStatusExt;
        let script = "trap '' TERM; echo ready; while :; do sleep 0.05; done";
        let mut child = child(script).await;
        let (_keep, mut signals) = mpsc::channel(1);
        let lost = async { terminated() };
        let grace = Duration::from_millis(200);
        let ended = supervise(&mut child, lost, &mut signals, grace);
        let ended = tokio::time::timeout(BOUND, ended).await.expect("bounded");
        assert_eq!(ended, Ended::SeatLost(terminated()));
        let status = child.try_wait().expect("reaped").expect("exited");
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    }

    #[test]
    fn a_signal_ends_as_128_plus_its_number() {
        use std::os::unix::process::ExitStatusExt;
        let status = ExitStatus::from_raw(libc::SIGTERM);
        assert_eq!(exit_code_of(Ok(status)), 128 + libc::SIGTERM as u8);
        assert_eq!(exit_code_of(Ok(ExitStatus::from_raw(5 << 8))), 5);
    }
}
