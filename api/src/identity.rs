//! Who the user is. `body` trusts the request's `userId` (demos, load tests); `header:NAME`
//! trusts a gateway that authenticated the user and set NAME; `jwt` verifies a Bearer token
//! (HS256 secret or a JWKS file; issuer, audience and expiry checked) and reads the user id from
//! a claim. With `header` and `jwt` a body `userId` is optional and refused if it disagrees.

use std::path::PathBuf;
use std::str::FromStr;

use axum::http::{HeaderMap, HeaderName, header};
use coupon_core::campaign::UserId;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::error::ApiError;

/// How the API learns the user, from `--identity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityMode {
    Body,
    Header(HeaderName),
    Jwt,
}

impl FromStr for IdentityMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "body" => Ok(Self::Body),
            "jwt" => Ok(Self::Jwt),
            _ => match s.strip_prefix("header:") {
                Some(name) => HeaderName::from_str(name)
                    .map(Self::Header)
                    .map_err(|_| format!("{name:?} is not a header name")),
                None => Err(format!(
                    "identity must be body, header:NAME or jwt, got {s:?}"
                )),
            },
        }
    }
}

/// Where JWTs are verified from and what they must say.
#[derive(Clone, Default)]
pub struct JwtSettings {
    /// HS256 shared secret.
    pub hs256_secret: Option<String>,
    /// A JWKS document (RS256/ES256/EdDSA public keys, chosen by `kid`).
    pub jwks_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// The claim holding the user id (a positive integer or its decimal string).
    pub user_claim: String,
}

impl std::fmt::Debug for JwtSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSettings")
            .field("hs256_secret", &self.hs256_secret.as_ref().map(|_| "***"))
            .field("jwks_file", &self.jwks_file)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("user_claim", &self.user_claim)
            .finish()
    }
}

/// A ready identity check.
pub enum Identity {
    Body,
    Header(HeaderName),
    Jwt(Box<JwtVerifier>),
}

pub struct JwtVerifier {
    /// (kid, key, algorithm); a token without `kid` is tried against every key of its algorithm.
    keys: Vec<(Option<String>, DecodingKey, Algorithm)>,
    issuer: Option<String>,
    audience: Option<String>,
    claim: String,
}

/// Why the JWT settings cannot verify anything: said at start, before serving.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("identity jwt needs --jwt-hs256-secret or --jwt-jwks-file")]
    NoKeys,
    #[error("the HS256 secret must be at least 32 bytes")]
    ShortSecret,
    #[error("--jwt-user-claim must name a claim")]
    NoUserClaim,
    #[error("JWKS file {}: {source}", path.display())]
    JwksRead {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("JWKS file {}: {source}", path.display())]
    JwksParse {
        path: std::path::PathBuf,
        source: serde_json::Error,
    },
    #[error("JWKS file {}: every key needs an \"alg\"", path.display())]
    JwksNoAlgorithm { path: std::path::PathBuf },
    #[error("JWKS file {}: {source}", path.display())]
    JwksKey {
        path: std::path::PathBuf,
        source: jsonwebtoken::errors::Error,
    },
}

impl Identity {
    pub fn new(mode: &IdentityMode, jwt: &JwtSettings) -> Result<Self, IdentityError> {
        Ok(match mode {
            IdentityMode::Body => Self::Body,
            IdentityMode::Header(name) => Self::Header(name.clone()),
            IdentityMode::Jwt => Self::Jwt(Box::new(JwtVerifier::new(jwt)?)),
        })
    }

    pub fn label(&self) -> &'static str {
        match self {
            Self::Body => "body",
            Self::Header(_) => "header",
            Self::Jwt(_) => "jwt",
        }
    }

    /// The user of a request; `body_user` is the body's `userId`, if it had one.
    pub fn user(&self, headers: &HeaderMap, body_user: Option<UserId>) -> Result<UserId, ApiError> {
        let trusted = match self {
            Self::Body => {
                return body_user.ok_or_else(|| {
                    ApiError::invalid("body must be a JSON object with a \"userId\" field")
                });
            }
            Self::Header(name) => {
                let raw = headers
                    .get(name)
                    .ok_or_else(|| ApiError::unauthenticated(format!("no {name} header")))?;
                raw.to_str().ok().and_then(parse_user).ok_or_else(|| {
                    ApiError::unauthenticated(format!("{name} is not a positive integer"))
                })?
            }
            Self::Jwt(v) => v.user(headers)?,
        };
        match body_user {
            Some(claimed) if claimed != trusted => Err(ApiError::IdentityMismatch),
            _ => Ok(trusted),
        }
    }
}

impl JwtVerifier {
    pub fn new(s: &JwtSettings) -> Result<Self, IdentityError> {
        let mut keys = Vec::new();
        if let Some(secret) = &s.hs256_secret {
            if secret.len() < 32 {
                return Err(IdentityError::ShortSecret);
            }
            keys.push((
                None,
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            ));
        }
        if let Some(file) = &s.jwks_file {
            let path = || file.clone();
            let text = std::fs::read_to_string(file).map_err(|source| IdentityError::JwksRead {
                path: path(),
                source,
            })?;
            let set: JwkSet =
                serde_json::from_str(&text).map_err(|source| IdentityError::JwksParse {
                    path: path(),
                    source,
                })?;
            for jwk in &set.keys {
                let alg = jwk
                    .common
                    .key_algorithm
                    .as_ref()
                    .and_then(|a| Algorithm::from_str(&format!("{a:?}")).ok())
                    .ok_or_else(|| IdentityError::JwksNoAlgorithm { path: path() })?;
                let key = DecodingKey::from_jwk(jwk).map_err(|source| IdentityError::JwksKey {
                    path: path(),
                    source,
                })?;
                keys.push((jwk.common.key_id.clone(), key, alg));
            }
        }
        if keys.is_empty() {
            return Err(IdentityError::NoKeys);
        }
        if s.user_claim.is_empty() {
            return Err(IdentityError::NoUserClaim);
        }
        Ok(Self {
            keys,
            issuer: s.issuer.clone(),
            audience: s.audience.clone(),
            claim: s.user_claim.clone(),
        })
    }

    fn user(&self, headers: &HeaderMap) -> Result<UserId, ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::unauthenticated("no Bearer token"))?;
        let head = jsonwebtoken::decode_header(token)
            .map_err(|e| ApiError::unauthenticated(format!("malformed token: {e}")))?;
        let mut last = None;
        for (kid, key, alg) in &self.keys {
            if *alg != head.alg || (head.kid.is_some() && kid.is_some() && *kid != head.kid) {
                continue;
            }
            match jsonwebtoken::decode::<serde_json::Value>(token, key, &self.validation(*alg)) {
                Ok(data) => {
                    return data
                        .claims
                        .get(&self.claim)
                        .and_then(|c| match c {
                            serde_json::Value::Number(n) => n.as_u64().filter(|u| *u > 0),
                            serde_json::Value::String(s) => parse_user(s),
                            _ => None,
                        })
                        .filter(|u| *u <= i64::MAX as u64)
                        .ok_or_else(|| {
                            ApiError::unauthenticated(format!(
                                "claim {:?} is not a positive integer user id",
                                self.claim
                            ))
                        });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(ApiError::unauthenticated(match last {
            Some(e) => format!("token refused: {e}"),
            None => format!("no key for a {:?} token", head.alg),
        }))
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = 30;
        v.set_required_spec_claims(&["exp"]);
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
        }
        match &self.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        v
    }
}

/// `Bearer <HS256 token of claims>`: what an identity provider sharing the secret hands out
/// (`couponctl load` and the tests sign with it).
pub fn hs256_bearer(secret: &str, claims: &serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), claims, &key)
        .unwrap_or_default();
    format!("Bearer {token}")
}

pub(crate) fn parse_user(s: &str) -> Option<UserId> {
    s.trim()
        .parse::<UserId>()
        .ok()
        .filter(|u| *u > 0 && *u <= i64::MAX as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-test-secret-that-is-32-bytes-long!";

    fn verifier() -> Identity {
        Identity::new(
            &IdentityMode::Jwt,
            &JwtSettings {
                hs256_secret: Some(SECRET.into()),
                issuer: Some("https://id.example".into()),
                audience: Some("coupons".into()),
                user_claim: "sub".into(),
                ..JwtSettings::default()
            },
        )
        .expect("verifier")
    }

    fn bearer(claims: serde_json::Value, secret: &str) -> HeaderMap {
        let value = hs256_bearer(secret, &claims);
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().expect("header"));
        h
    }

    fn claims(sub: serde_json::Value, exp_from_now: i64) -> serde_json::Value {
        serde_json::json!({
            "sub": sub, "iss": "https://id.example", "aud": "coupons",
            "exp": chrono::Utc::now().timestamp() + exp_from_now,
        })
    }

    #[test]
    fn a_valid_token_names_the_user_and_the_body_may_not_disagree() {
        let id = verifier();
        let h = bearer(claims(serde_json::json!("42"), 600), SECRET);
        assert_eq!(id.user(&h, None).expect("user"), 42);
        assert_eq!(id.user(&h, Some(42)).expect("same user"), 42);
        assert_eq!(
            id.user(&h, Some(43)).expect_err("refused").code(),
            "identity_mismatch"
        );
        let numeric = bearer(claims(serde_json::json!(7), 600), SECRET);
        assert_eq!(id.user(&numeric, None).expect("numeric sub"), 7);
    }

    #[test]
    fn forged_expired_and_foreign_tokens_are_refused() {
        let id = verifier();
        let cases = [
            bearer(
                claims(serde_json::json!("42"), 600),
                "another-secret-of-at-least-32-bytes",
            ),
            bearer(claims(serde_json::json!("42"), -3600), SECRET),
            bearer(
                serde_json::json!({"sub": "42", "iss": "https://evil.example", "aud": "coupons",
                                   "exp": chrono::Utc::now().timestamp() + 600}),
                SECRET,
            ),
            bearer(
                serde_json::json!({"sub": "42", "iss": "https://id.example", "aud": "other",
                                   "exp": chrono::Utc::now().timestamp() + 600}),
                SECRET,
            ),
            bearer(claims(serde_json::json!("alice"), 600), SECRET),
            HeaderMap::new(),
        ];
        for h in cases {
            let e = id.user(&h, Some(42)).expect_err("refused");
            assert_eq!(e.code(), "unauthenticated", "{e}");
            assert_eq!(e.status(), axum::http::StatusCode::UNAUTHORIZED);
        }
    }

    #[test]
    fn a_gateway_header_is_trusted_and_checked() {
        let id = Identity::new(
            &"header:x-user-id".parse().expect("mode"),
            &JwtSettings::default(),
        )
        .expect("identity");
        let mut h = HeaderMap::new();
        assert_eq!(
            id.user(&h, Some(5)).expect_err("refused").code(),
            "unauthenticated"
        );
        h.insert("x-user-id", "5".parse().expect("value"));
        assert_eq!(id.user(&h, None).expect("user"), 5);
        assert_eq!(
            id.user(&h, Some(6)).expect_err("refused").code(),
            "identity_mismatch"
        );
        h.insert("x-user-id", "-1".parse().expect("value"));
        assert_eq!(
            id.user(&h, None).expect_err("refused").code(),
            "unauthenticated"
        );
        assert!("header:bad header".parse::<IdentityMode>().is_err());
        assert!("token".parse::<IdentityMode>().is_err());
    }

    #[test]
    fn jwt_settings_are_checked_at_start() {
        let e = |s: JwtSettings| JwtVerifier::new(&s).err().expect("refused").to_string();
        assert!(
            e(JwtSettings {
                user_claim: "sub".into(),
                ..JwtSettings::default()
            })
            .contains("--jwt-hs256-secret")
        );
        assert!(
            e(JwtSettings {
                hs256_secret: Some("short".into()),
                user_claim: "sub".into(),
                ..JwtSettings::default()
            })
            .contains("32 bytes")
        );
        assert!(
            e(JwtSettings {
                jwks_file: Some("/no/such/jwks.json".into()),
                user_claim: "sub".into(),
                ..JwtSettings::default()
            })
            .contains("/no/such/jwks.json")
        );
        let shown = format!(
            "{:?}",
            JwtSettings {
                hs256_secret: Some(SECRET.into()),
                ..JwtSettings::default()
            }
        );
        assert!(!shown.contains(SECRET));
    }
}
