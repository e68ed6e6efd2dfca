//! Jobs reach the privileged threads, come back with their results, and end with their caller.

use super::*;
use std::time::Duration;

fn this_thread() -> String {
    std::thread::current().name().unwrap_or("unnamed").to_owned()
}

#[test]
fn blocking_and_async_jobs_run_on_the_privileged_threads() {
    start().unwrap();
    assert!(started());
    let caller = std::thread::spawn(|| {
        let blocking = run_blocking(this_thread).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let asynchronous = rt.block_on(run_async(|| async { this_thread() })).unwrap();
        (blocking, asynchronous)
    })
    .join()
    .unwrap();
    assert_eq!(caller.0, "xapid-privileged");
    assert_eq!(caller.1, "xapid-privileged");
}

#[test]
fn a_job_that_asks_for_privileged_work_runs_it_in_place() {
    start().unwrap();
    let nested = run_blocking(|| run_blocking(|| (this_thread(), 5)).unwrap()).unwrap();
    assert_eq!(nested, ("xapid-privileged".to_owned(), 5));
}

#[test]
fn dropping_the_caller_drops_its_job() {
    start().unwrap();
    struct Guard(std::sync::mpsc::Sender<()>);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let (dropped_tx, dropped) = std::sync::mpsc::channel();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let waited = rt.block_on(async move {
        tokio::time::timeout(
            Duration::from_millis(100),
            run_async(move || async move {
                let _guard = Guard(dropped_tx);
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }),
        )
        .await
    });
    assert!(waited.is_err(), "the job cannot have finished");
    dropped
        .recv_timeout(Duration::from_secs(10))
        .expect("the job's future is dropped once its caller is gone");
}
