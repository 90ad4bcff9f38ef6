//! An engine holding seats through the seatbroker engine client library.
//!
//! ```sh
//! cargo run --example engine -- --addr http://127.0.0.1:50051 --key sbk_... [--seats 2] [--wait 60s] [--hold 30s]
//! ```
//!
//! It acquires `--seats` KRE seats on one stream (waiting in the queue up to `--wait`,
//! printing the queue position), holds them for `--hold` while the library renews them
//! (and reconnects and re-attaches them if the broker restarts), then releases them. A
//! seat the broker ends meanwhile (an admin terminating it, say) is reported with the
//! reason.

use std::time::Duration;

use seatbroker::engine_client::{ClientOptions, EngineClient};
use seatbroker::proto::Product;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        let at = args.iter().position(|arg| arg == name)?;
        args.get(at + 1).cloned()
    };
    let addr = flag("--addr").unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let key = flag("--key").ok_or("--key sbk_... is required")?;
    let seats: usize = flag("--seats").map_or(Ok(1), |n| n.parse())?;
    let duration =
        |name, default| flag(name).map_or(Ok(default), |d| humantime::parse_duration(&d));
    let wait = duration("--wait", Duration::ZERO)?;
    let hold = duration("--hold", Duration::from_secs(30))?;

    let client = EngineClient::connect(ClientOptions::new([addr], &key)).await?;
    let (lost_sender, mut lost) = tokio::sync::mpsc::channel(seats.max(1));
    let mut held = Vec::new();
    for n in 0..seats {
        let pending = client
            .acquire(Product::Kre)
            .label(format!("example seat {n}"))
            .wait(wait)
            .start()
            .await?;
        let mut queue = pending.queue_position();
        let printer = tokio::spawn(async move {
            while queue.changed().await.is_ok() {
                if let Some(at) = *queue.borrow_and_update() {
                    println!("waiting: position {} of {}", at.position, at.queue_length);
                }
            }
        });
        let seat = pending.seat().await?;
        printer.abort();
        println!(
            "seat {n}: lease {} generation {}",
            seat.lease_id(),
            seat.generation()
        );
        // Every seat's loss goes to one channel.
        let (sender, loss) = (lost_sender.clone(), seat.lost());
        tokio::spawn(async move { sender.send((n, loss.await)).await });
        held.push(seat);
    }

    tokio::select! {
        Some((n, why)) = lost.recv() => println!("seat {n} lost: {why}"),
        _ = tokio::time::sleep(hold) => println!("held {seats} seats for {}", humantime::format_duration(hold)),
    }
    for seat in held {
        if seat.lost_now().is_none() {
            seat.release().await?;
        }
    }
    Ok(())
}
