//! One API call: bounded in time, counted when it fails, and its error
//! told the way the API server told it (its status message and reason,
//! e.g. `nodes "n1" is forbidden: ... (Forbidden, HTTP 403)`).

use std::{future::Future, time::Duration};

use anyhow::{Result, anyhow};

use crate::metrics::{self, KubeOperation};

/// How long one call may take. The client sets no read timeout of its own
/// (it would cut the Node watch, which can be quiet for minutes).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `call`; a failure or no answer within [`CALL_TIMEOUT`] is counted
/// under `operation` and told plainly.
pub async fn call<T>(
    operation: KubeOperation,
    call: impl Future<Output = kube::Result<T>>,
) -> Result<T> {
    let outcome = match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(value)) => return Ok(value),
        Ok(Err(error)) => describe(error),
        Err(_) => anyhow!(
            "no answer from the API server within {} s",
            CALL_TIMEOUT.as_secs()
        ),
    };
    metrics::global().kube_api().error(operation);
    Err(outcome)
}

/// A client error as an operator should read it: the API server's own
/// words for a refusal, the cause chain for anything else.
pub fn describe(error: kube::Error) -> anyhow::Error {
    match error {
        kube::Error::Api(status) => {
            let reason = if status.reason.is_empty() {
                String::new()
            } else {
                format!("{}, ", status.reason)
            };
            let message = if status.message.is_empty() {
                "the API server refused it"
            } else {
                &status.message
            };
            anyhow!("{message} ({reason}HTTP {})", status.code)
        }
        other => anyhow!("{}", error_text(&other)),
    }
}

/// An error and its causes on one line. kube's errors often repeat their
/// cause in their own text; a cause already said is not said again.
pub fn error_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_told_in_the_api_server_s_words() {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": "nodes \"n1\" is forbidden: User \"system:serviceaccount:kube-flannel:flannel\" cannot patch resource \"nodes/status\" in API group \"\" at the cluster scope",
            "reason": "Forbidden",
            "details": { "name": "n1", "kind": "nodes" },
            "code": 403
        }))
        .unwrap();
        let error = describe(kube::Error::Api(Box::new(status)));
        assert_eq!(
            error.to_string(),
            "nodes \"n1\" is forbidden: User \"system:serviceaccount:kube-flannel:flannel\" \
             cannot patch resource \"nodes/status\" in API group \"\" at the cluster scope \
             (Forbidden, HTTP 403)"
        );
    }

    #[test]
    fn a_cause_already_said_is_not_repeated() {
        let io = std::io::Error::other("connection refused");
        let error = kube::Error::ReadEvents(io);
        assert_eq!(
            error_text(&error),
            "Error reading events stream: connection refused"
        );
    }
}
