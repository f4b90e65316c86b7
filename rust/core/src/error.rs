//! The one error type of the core. Refusals are not errors: they are [`crate::Decision`]s.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// An argument is out of its allowed range; `argument` is the caller-facing name.
    InvalidArgument {
        argument: &'static str,
        message: String,
    },
    /// The limiter already keeps its maximum number of reservations.
    TooManyReservations { max: usize },
    /// The store that holds the budget did not answer (a shared budget's server); `cause`
    /// says why. Nothing was decided.
    Unavailable { cause: String },
    /// The store answered but refused the command (an ACL that does not cover the key or
    /// the command); `cause` is its answer. Nothing was decided.
    Denied { cause: String },
}

impl Error {
    pub(crate) fn invalid(argument: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            argument,
            message: message.into(),
        }
    }

    /// `count` must be a whole number of tokens, at least 1.
    pub fn invalid_count(got: &dyn fmt::Display) -> Self {
        Self::invalid("count", format!("must be an integer >= 1, got {got}"))
    }

    /// The name of the offending argument.
    pub fn argument(&self) -> &'static str {
        match self {
            Error::InvalidArgument { argument, .. } => argument,
            Error::TooManyReservations { .. } => "max_reservations",
            Error::Unavailable { .. } | Error::Denied { .. } => "backend",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument { argument, message } => write!(f, "{argument}: {message}"),
            Error::TooManyReservations { max } => write!(
                f,
                "max_reservations: this limiter already keeps {max} reservations; execute or \
                 cancel some, or let them expire"
            ),
            Error::Unavailable { cause } => {
                write!(f, "the rate limit store did not answer: {cause}")
            }
            Error::Denied { cause } => write!(f, "the rate limit store refused: {cause}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
