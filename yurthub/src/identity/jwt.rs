//! JWT handling: the unverified claims a token carries (enough to scope
//! caches once the cloud vouched for it), and verification against the
//! cluster issuer's published keys (JWKS) or the hub's own offline key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// What a verified token says about who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub issuer: String,
    pub subject: String,
    pub expires: Option<i64>,
}

/// The claims read without verification.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub iss: String,
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub exp: Option<i64>,
    #[serde(default, deserialize_with = "audiences")]
    pub aud: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("not a JWT")]
    NotJwt,
    #[error("no issuer keys are cached (never fetched from the cloud)")]
    NoKeys,
    #[error("the token's issuer {0:?} is not the cluster's")]
    ForeignIssuer(String),
    #[error("no cached issuer key matches the token's key id {0:?}")]
    UnknownKey(Option<String>),
    #[error("the token's audience is not one the cluster accepts")]
    Audience,
    #[error("the token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

fn audiences<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Aud>::deserialize(d)? {
        None => Vec::new(),
        Some(Aud::One(a)) => vec![a],
        Some(Aud::Many(v)) => v,
    })
}

/// The payload of a three-part token, unverified; None for anything that
/// is not shaped like a JWT (opaque and bootstrap tokens).
pub fn unverified_claims(token: &str) -> Option<Claims> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The key id a token's header names.
pub fn key_id(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).ok()?.kid
}

/// The cluster issuer's verification state, as fetched while online.
#[derive(Debug, Clone)]
pub struct IssuerKeys {
    pub issuer: String,
    pub keys: JwkSet,
}

impl IssuerKeys {
    pub fn has_key(&self, kid: &str) -> bool {
        self.keys.find(kid).is_some()
    }

    /// Verifies signature, issuer, expiry and not-before (no leeway past
    /// `exp`: see the README's trust model), and that the audience is one
    /// the cloud accepted before (`audiences`; the issuer itself when none
    /// was seen, the apiserver's default).
    pub fn verify(&self, token: &str, audiences: &[String]) -> Result<Verified, Error> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Error::NotJwt)?;
        let claims = unverified_claims(token).ok_or(Error::NotJwt)?;
        if claims.iss != self.issuer {
            return Err(Error::ForeignIssuer(claims.iss));
        }
        let jwk = match &header.kid {
            Some(kid) => self.keys.find(kid),
            // One key and no kid: the apiserver's own tokens always carry one,
            // but a single-key issuer is unambiguous.
            None if self.keys.keys.len() == 1 => self.keys.keys.first(),
            None => None,
        }
        .ok_or_else(|| Error::UnknownKey(header.kid.clone()))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut v = Validation::new(header.alg);
        v.leeway = 0;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        let accepted: Vec<String> = if audiences.is_empty() {
            vec![self.issuer.clone()]
        } else {
            audiences.to_vec()
        };
        v.set_audience(&accepted);
        v.set_required_spec_claims(&["exp", "sub", "iss"]);
        match jsonwebtoken::decode::<Claims>(token, &key, &v) {
            Ok(data) => Ok(Verified {
                issuer: data.claims.iss,
                subject: data.claims.sub,
                expires: data.claims.exp,
            }),
            Err(e) => Err(match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidAudience => Error::Audience,
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Error::Expired,
                _ => Error::Invalid(e.to_string()),
            }),
        }
    }
}

/// Verifies a token the hub minted offline with its own secret (HS256).
pub fn verify_own(token: &str, secret: &[u8], issuer: &str) -> Result<Verified, Error> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| Error::NotJwt)?;
    if header.alg != Algorithm::HS256 {
        return Err(Error::Invalid("not signed by this hub".into()));
    }
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = 0;
    v.set_issuer(&[issuer]);
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp", "sub", "iss"]);
    let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret), &v)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(Verified {
        issuer: data.claims.iss,
        subject: data.claims.sub,
        expires: data.claims.exp,
    })
}

/// Mints an HS256 token with the hub's secret.
pub fn mint_own(claims: &serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("HS256 encoding of a JSON object cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_of_opaque_and_jwt_tokens() {
        assert!(unverified_claims("abcdef.0123456789abcdef").is_none());
        assert!(unverified_claims("garbage").is_none());
        let t = mint_own(
            &serde_json::json!({"iss": "i", "sub": "s", "exp": 4_000_000_000i64, "aud": "a"}),
            b"k",
        );
        let c = unverified_claims(&t).unwrap();
        assert_eq!(
            (c.iss.as_str(), c.sub.as_str(), c.aud),
            ("i", "s", vec!["a".to_string()])
        );
        assert_eq!(verify_own(&t, b"k", "i").unwrap().subject, "s");
        assert!(verify_own(&t, b"other", "i").is_err());
        assert!(verify_own(&t, b"k", "j").is_err());
        let expired = mint_own(&serde_json::json!({"iss": "i", "sub": "s", "exp": 1}), b"k");
        assert!(verify_own(&expired, b"k", "i").is_err());
    }
}
