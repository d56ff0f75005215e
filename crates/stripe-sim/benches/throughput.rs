//! Requests per second for a no-op route (the HTTP stack and auth alone), create-customer and retrieve-customer,
//! with faults and rate limiting off, driven by concurrent keep-alive clients in the same process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stripe_sim::SimConfig;

const CLIENTS: usize = 32;
const SECONDS: u64 = 4;
const KEY: &str = "sk_test_bench";

#[derive(Clone, Copy)]
enum Op {
    Ping,
    Create,
    Retrieve,
}

async fn drive(base: &str, op: Op, ids: Arc<Vec<String>>) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(SECONDS);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..CLIENTS {
        let (client, done, errors, ids, base) = (
            client.clone(),
            done.clone(),
            errors.clone(),
            ids.clone(),
            base.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = worker;
            while Instant::now() < stop {
                let req = match op {
                    Op::Ping => client.get(format!("{base}/_sim/ping")),
                    Op::Create => client
                        .post(format!("{base}/v1/customers"))
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(format!("name=Bench+{i}&metadata[business_id]=b{i}")),
                    Op::Retrieve => {
                        client.get(format!("{base}/v1/customers/{}", ids[i % ids.len()]))
                    }
                };
                match req.bearer_auth(KEY).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += CLIENTS;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let errs = errors.load(Ordering::Relaxed);
    if errs > 0 {
        eprintln!("  ({errs} failed requests)");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sim = stripe_sim::start(SimConfig { rate_limit_per_second: 0, ..SimConfig::default() }).await.unwrap();
        let base = sim.base_url();
        let client = reqwest::Client::new();
        let mut ids = Vec::new();
        for i in 0..1000 {
            let r = client
                .post(format!("{base}/v1/customers"))
                .bearer_auth(KEY)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("name=Seed+{i}"))
                .send()
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            ids.push(v["id"].as_str().unwrap().to_owned());
        }
        let ids = Arc::new(ids);
        println!("stripe-sim throughput: {CLIENTS} keep-alive clients, {SECONDS} s per route, {} worker threads", std::thread::available_parallelism().map_or(0, |n| n.get()));
        let baseline = drive(&base, Op::Ping, ids.clone()).await;
        println!("GET  /_sim/ping (baseline)     {baseline:>9.0} req/s");
        for (name, op) in [("POST /v1/customers", Op::Create), ("GET  /v1/customers/{id}", Op::Retrieve)] {
            let rps = drive(&base, op, ids.clone()).await;
            println!("{name:<30} {rps:>9.0} req/s  ({:.0}% of baseline)", 100.0 * rps / baseline);
        }
        sim.shutdown().await;
    });
}
