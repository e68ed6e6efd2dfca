//! The network backends' failures as XenAPI errors: `PIF_CONFIGURATION_ERROR [PIF, message]`,
//! as the reference answers when the host's networking refuses a PIF's configuration.

use super::ApiError;
use crate::network::backend::NetError;

impl ApiError {
    /// `PIF_CONFIGURATION_ERROR [pif, what the backend said]`.
    pub fn pif_configuration(pif: &str, e: &NetError) -> ApiError {
        ApiError::PifConfigurationError {
            pif: pif.to_owned(),
            msg: super::error_chain(e),
        }
    }
}
