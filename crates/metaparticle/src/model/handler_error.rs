//! [`HandlerError`]: an error a handler (or a call it makes) returns on purpose.

use serde_json::Value;

/// An error a handler returns on purpose; it reaches the caller as a JSON-RPC error. It is also
/// what a call to another service of the app fails with ([`Context::call`](super::context::Context::call)): the callee's error
/// as it sent it, or the hop's, so a handler passes it on with `?` and its own caller sees the
/// same code, message and data.
///
/// ```
/// use metaparticle::HandlerError;
/// fn divide((a, b): (i64, i64)) -> Result<i64, HandlerError> {
///     if b == 0 {
///         return Err(HandlerError::new("division by zero"));
///     }
///     Ok(a / b)
/// }
/// # assert!(divide((1, 0)).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct HandlerError {
    /// JSON-RPC error code; application errors default to `-32099`'s neighbour `-32050`.
    pub code: i64,
    /// Human-readable message sent to the caller.
    pub message: String,
    /// Optional structured detail sent as the error's `data`.
    pub data: Option<Value>,
}

impl HandlerError {
    /// The code used for application errors unless one is given with [`HandlerError::with_code`].
    pub const APPLICATION: i64 = -32050;

    /// An application error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self { code: Self::APPLICATION, message: message.into(), data: None }
    }

    /// The same error with another JSON-RPC code.
    pub fn with_code(mut self, code: i64) -> Self {
        self.code = code;
        self
    }

    /// The same error with structured detail.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for HandlerError {}
