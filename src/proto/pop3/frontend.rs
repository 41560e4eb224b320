//! TEMP STUB
use crate::proto::{FrontendEvent, LoginOutcome, PreauthLimits, Security};
use bytes::Bytes;
use std::time::Instant;
pub struct Pop3Frontend;
impl Pop3Frontend {
    pub fn new(_s: Security, _l: PreauthLimits, _n: Instant) -> Self {
        Self
    }
    pub fn handle_input(&mut self, _b: &[u8]) {}
    pub fn handle_outcome(&mut self, _o: LoginOutcome) {}
    pub fn handle_timeout(&mut self, _n: Instant) {}
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    pub fn tls_established(&mut self) {}
    pub fn poll_event(&mut self) -> Option<FrontendEvent> {
        None
    }
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        None
    }
    pub fn into_residual(self) -> Bytes {
        Bytes::new()
    }
}
