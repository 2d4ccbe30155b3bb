//! The admin bearer token that gRPC writes require
//! (`authorization: Bearer <token>`).

use tonic::{Request, Status};

/// Compares without leaking the position of the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Accepts `request` only if it carries `token`. Without a configured
/// token writes are refused altogether; `setting` names the configuration
/// key that enables them, for the error message.
pub fn authorize<T>(request: &Request<T>, token: Option<&str>, setting: &str) -> Result<(), Status> {
    let Some(token) = token else {
        return Err(Status::unauthenticated(format!(
            "writes are disabled: no admin token is configured ({setting})"
        )));
    };
    let Some(header) = request.metadata().get("authorization") else {
        return Err(Status::unauthenticated(
            "no token was sent: writes need the admin token (authorization: Bearer <token>)",
        ));
    };
    let given = header.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(Status::unauthenticated("the token sent was rejected: it is not the admin token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn tokens_are_checked() {
        let mut request = Request::new(());
        assert!(
            authorize(&request, None, "x.admin_token_file")
                .unwrap_err()
                .message()
                .contains("x.admin_token_file")
        );
        let missing = authorize(&request, Some("0123456789abcdef"), "x").unwrap_err();
        assert!(missing.message().contains("no token was sent"), "{missing:?}");
        request.metadata_mut().insert("authorization", "Bearer 0123456789abcdef".parse().unwrap());
        assert!(authorize(&request, Some("0123456789abcdef"), "x").is_ok());
        let rejected = authorize(&request, Some("0123456789abcdeX"), "x").unwrap_err();
        assert!(rejected.message().contains("rejected"), "{rejected:?}");
    }
}
