//! The stop signal `serve`'s tasks share: resolved once (SIGTERM, Ctrl-C, a test), waited on
//! by many. Its own module so the tasks' modules need not depend on [`crate::service`], which
//! depends on them.

use std::future::Future;

use tokio::sync::watch;

/// A shutdown signal that many tasks can wait on.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Resolves `signal` once and fans it out.
    pub fn new(signal: impl Future<Output = ()> + Send + 'static) -> Self {
        let (sender, receiver) = watch::channel(false);
        tokio::spawn(async move {
            signal.await;
            let _ = sender.send(true);
        });
        Shutdown(receiver)
    }

    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut receiver = self.0.clone();
        async move {
            let _ = receiver.wait_for(|stopped| *stopped).await;
        }
    }
}
