//! The thread the agent's VRRP speakers run on.
//!
//! A speaker must send its adverts and read its peers' on time: a backup
//! whose timer fires late takes over from a live master, and a master
//! whose advert goes out late is taken from. In the agent they share the
//! process with sync passes (a full pass over thousands of services) and
//! status writes. On their own thread, with their own runtime and their
//! own rtnetlink connection (VIP adds and removes), they wait for the
//! kernel's scheduler only, which favours a thread that has been sleeping
//! over one that has been busy, as keepalived's separate VRRP process does.

use std::future::Future;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::link::{LinkError, Links};

#[derive(Debug, thiserror::Error)]
pub enum ThreadError {
    #[error("start the VRRP thread: {0}")]
    Start(#[source] std::io::Error),
    #[error("open the VRRP thread's rtnetlink connection: {0}")]
    Link(#[from] LinkError),
}

/// One OS thread running a current-thread runtime. Tasks spawned on it
/// run there, whatever runtime spawns them and awaits their handles; the
/// thread ends (and its tasks with it) when this is dropped.
pub struct SpeakerThread {
    handle: Handle,
    links: Links,
    _stop: oneshot::Sender<()>,
}

impl SpeakerThread {
    pub fn start() -> Result<SpeakerThread, ThreadError> {
        let runtime = Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ThreadError::Start)?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("tunlb-vrrp".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(ThreadError::Start)?;
        // The connection's task is spawned on the runtime current here.
        let links = {
            let _entered = handle.enter();
            Links::connect()?
        };
        Ok(SpeakerThread {
            handle,
            links,
            _stop: stop,
        })
    }

    /// Runs `task` on the thread.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }

    /// The thread's own rtnetlink connection (a reopened one stays there
    /// too: it is opened by the call that finds it gone, on this thread).
    pub fn links(&self) -> Links {
        self.links.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_the_thread_and_end_with_it() {
        let t = SpeakerThread::start().unwrap();
        let name = t
            .spawn(async { std::thread::current().name().map(str::to_string) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("tunlb-vrrp"));
        let (tx, rx) = oneshot::channel::<()>();
        let pending = t.spawn(async move {
            let _ = rx.await;
        });
        drop(t);
        // The runtime's shutdown cancels what was still running.
        assert!(pending.await.unwrap_err().is_cancelled());
        drop(tx);
    }
}
