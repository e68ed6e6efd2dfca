//! argon2 with its working memory in a private anonymous mapping, unmapped as soon as the
//! hash is done.
//!
//! argon2 needs `m` KiB of working memory per hash (19 MiB with the default parameters).
//! Taken from the global allocator, those pages stay with the allocator after the hash: an idle
//! daemon would carry them in its resident set for good after its first start or its first
//! password login. A mapping of its own is handed back to the kernel when the hash ends.
//!
//! The PHC strings produced and accepted are exactly those of `argon2::Argon2` with the same
//! parameters; [`ScratchArgon2`] implements `PasswordHasher`, so verification is the
//! `password_hash` crate's own (parse, recompute, constant-time compare).

use argon2::password_hash::{
    Decimal, Error as PhcError, Ident, Output, ParamsString, PasswordHash, PasswordHasher, Salt,
};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// Zeroed argon2 blocks in an anonymous private mapping, unmapped on drop.
struct BlockMap {
    ptr: std::ptr::NonNull<Block>,
    count: usize,
}

impl BlockMap {
    /// Maps `count` zeroed blocks.
    fn new(count: usize) -> Result<BlockMap, PhcError> {
        let len = count
            .checked_mul(std::mem::size_of::<Block>())
            .ok_or(PhcError::ParamsMaxExceeded)?;
        if len == 0 {
            return Err(PhcError::ParamsMaxExceeded);
        }
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches
        // no existing memory; the result is checked against MAP_FAILED before any use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(PhcError::Crypto);
        }
        let ptr = std::ptr::NonNull::new(p.cast::<Block>()).ok_or(PhcError::Crypto)?;
        Ok(BlockMap { ptr, count })
    }

    fn blocks(&mut self) -> &mut [Block] {
        // SAFETY: the mapping holds `count` blocks' worth of bytes, is page-aligned (more than
        // `Block`'s 64-byte alignment), zero-filled by the kernel (a `Block` is plain `u64`s,
        // so all-zero bytes are a valid value), and owned by `self` alone: the `&mut self`
        // borrow makes the slice the only access while it lives.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.count) }
    }
}

impl Drop for BlockMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new` (same address, same length); no
        // slice of it outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.count * std::mem::size_of::<Block>());
        }
    }
}

/// argon2 (argon2id v19 with the crate's default parameters unless a hash says otherwise)
/// whose working memory is mapped for each hash and unmapped right after.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ScratchArgon2;

impl PasswordHasher for ScratchArgon2 {
    type Params = Params;

    fn hash_password_customized<'a>(
        &self,
        password: &[u8],
        algorithm: Option<Ident<'a>>,
        version: Option<Decimal>,
        params: Params,
        salt: impl Into<Salt<'a>>,
    ) -> Result<PasswordHash<'a>, PhcError> {
        let algorithm = algorithm.map(Algorithm::try_from).transpose()?.unwrap_or_default();
        let version = version.map(Version::try_from).transpose()?.unwrap_or_default();
        let salt = salt.into();
        let mut salt_buf = [0u8; 64];
        let salt_bytes = salt.decode_b64(&mut salt_buf)?;
        let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
        let hasher = Argon2::new(algorithm, version, params.clone());
        let mut memory = BlockMap::new(params.block_count())?;
        let output = Output::init_with(output_len, |out| {
            Ok(hasher.hash_password_into_with_memory(password, salt_bytes, out, memory.blocks())?)
        })?;
        drop(memory);
        Ok(PasswordHash {
            algorithm: algorithm.ident(),
            version: Some(version.into()),
            params: ParamsString::try_from(&params)?,
            salt: Some(salt),
            hash: Some(output),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{rand_core::OsRng, PasswordVerifier, SaltString};

    fn cheap() -> Params {
        // Small parameters keep the tests fast; the code path is the same.
        Params::new(64, 1, 1, None).unwrap()
    }

    #[test]
    fn hash_then_verify() {
        let salt = SaltString::generate(&mut OsRng);
        let h = ScratchArgon2.hash_password(b"secret", &salt).unwrap().to_string();
        let parsed = PasswordHash::new(&h).unwrap();
        assert!(ScratchArgon2.verify_password(b"secret", &parsed).is_ok());
        assert_eq!(
            ScratchArgon2.verify_password(b"Secret", &parsed),
            Err(PhcError::Password)
        );
        assert_eq!(ScratchArgon2.verify_password(b"", &parsed), Err(PhcError::Password));
    }

    #[test]
    fn same_phc_string_as_the_argon2_crate() {
        let salt = SaltString::generate(&mut OsRng);
        let ours = ScratchArgon2.hash_password(b"pw", &salt).unwrap().to_string();
        let theirs = Argon2::default().hash_password(b"pw", &salt).unwrap().to_string();
        assert_eq!(ours, theirs);
        let ours = ScratchArgon2
            .hash_password_customized(b"pw", Some(Algorithm::Argon2i.ident()), None, cheap(), &salt)
            .unwrap()
            .to_string();
        let theirs = Argon2::new(Algorithm::Argon2i, Version::V0x13, cheap())
            .hash_password(b"pw", &salt)
            .unwrap()
            .to_string();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn argon2_crate_hashes_verify() {
        let salt = SaltString::generate(&mut OsRng);
        for hasher in [
            Argon2::default(),
            Argon2::new(Algorithm::Argon2d, Version::V0x10, cheap()),
        ] {
            let h = hasher.hash_password(b"letmein", &salt).unwrap().to_string();
            let parsed = PasswordHash::new(&h).unwrap();
            assert!(ScratchArgon2.verify_password(b"letmein", &parsed).is_ok(), "{h}");
            assert_eq!(
                ScratchArgon2.verify_password(b"letmeout", &parsed),
                Err(PhcError::Password),
                "{h}"
            );
        }
    }

    #[test]
    fn a_stored_default_hash_verifies() {
        // The form every state dir holds: `Argon2::default().hash_password`.
        let salt = SaltString::from_b64("c2FsdHNhbHRzYWx0").unwrap();
        let h = Argon2::default().hash_password(b"root-pw", &salt).unwrap().to_string();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$"), "{h}");
        let parsed = PasswordHash::new(&h).unwrap();
        assert!(ScratchArgon2.verify_password(b"root-pw", &parsed).is_ok());
    }

    #[test]
    fn bad_parameters_are_refused_without_panicking() {
        for h in [
            "$argon2id$v=19$m=0,t=2,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$argon2id$v=19$m=64,t=0,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$argon2id$v=18$m=64,t=1,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$argon2id$v=19$m=64,t=1,p=1,x=2$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$scrypt$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0",
        ] {
            if let Ok(p) = PasswordHash::new(h) {
                assert!(ScratchArgon2.verify_password(b"x", &p).is_err(), "{h}");
            }
        }
    }
}
