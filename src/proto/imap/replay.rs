//! TEMP STUB
use crate::proto::{LoginRequest, ReplayEvent, UnsafeCredential};
use bytes::Bytes;
pub struct ImapReplay;
impl ImapReplay {
    pub fn new(_r: &LoginRequest, _s: bool) -> Result<Self, UnsafeCredential> {
        Ok(Self)
    }
    pub fn handle_input(&mut self, _b: &[u8]) {}
    pub fn tls_established(&mut self) {}
    pub fn poll_event(&mut self) -> Option<ReplayEvent> {
        None
    }
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        None
    }
    pub fn into_residual(self) -> Bytes {
        Bytes::new()
    }
}
