//! The shape of every generated enum and of the error codes (the generator writes only the
//! names and values).

/// An API enum: its values, the wire spelling of each, a catch-all for values this SDK does
/// not know, and serde as the wire spells it.
macro_rules! xenapi_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $wire:literal, default $default:ident, {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, )*
        }
    ) => {
        $(#[$meta])*
        ///
        /// A value the datamodel does not list (a newer server's) arrives as
        /// [`Unrecognized`](Self::Unrecognized) with its spelling, and travels back unchanged.
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A value this SDK's datamodel does not list, spelled as it arrived.
            Unrecognized(String),
        }

        impl $name {
            /// The enum's name in the datamodel.
            pub const NAME: &'static str = $wire;

            /// Every value the datamodel lists, in its order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The wire spelling.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $value, )*
                    $name::Unrecognized(s) => s,
                }
            }

            /// The value with this spelling: exactly, else ignoring ASCII case (as xapi matches
            /// enum parameters), else [`Unrecognized`](Self::Unrecognized).
            pub fn from_wire(s: &str) -> Self {
                match s {
                    $( $value => $name::$variant, )*
                    _ => Self::ALL
                        .iter()
                        .find(|v| v.as_str().eq_ignore_ascii_case(s))
                        .cloned()
                        .unwrap_or_else(|| $name::Unrecognized(s.to_owned())),
                }
            }

            /// Whether the value is one the datamodel lists.
            pub fn is_recognized(&self) -> bool {
                !matches!(self, $name::Unrecognized(_))
            }
        }

        impl Default for $name {
            /// The datamodel's first value (what a field without a default holds).
            fn default() -> Self {
                $name::$default
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::convert::Infallible;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok(Self::from_wire(s))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                crate::codec::deserialize_text(d, $name::from_wire)
            }
        }
    };
}

/// The error codes of errors.json, with their parameter names.
macro_rules! xenapi_error_codes {
    ( $( $(#[$vmeta:meta])* $variant:ident = $code:literal, $params:expr, )* ) => {
        /// A XenAPI error code (errors.json), or one this SDK does not know.
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$vmeta])* $variant, )*
            /// A code errors.json does not list, spelled as it arrived.
            Unrecognized(String),
        }

        impl ErrorCode {
            /// The code as the server spells it (`VM_BAD_POWER_STATE`).
            pub fn as_str(&self) -> &str {
                match self {
                    $( ErrorCode::$variant => $code, )*
                    ErrorCode::Unrecognized(s) => s,
                }
            }

            /// The code with this spelling.
            pub fn from_wire(s: &str) -> ErrorCode {
                match s {
                    $( $code => ErrorCode::$variant, )*
                    _ => ErrorCode::Unrecognized(s.to_owned()),
                }
            }

            /// The names of the code's parameters, in order (`None`: not documented, or not a
            /// code errors.json lists).
            pub fn param_names(&self) -> Option<&'static [&'static str]> {
                match self {
                    $( ErrorCode::$variant => $params, )*
                    ErrorCode::Unrecognized(_) => None,
                }
            }
        }

        impl std::fmt::Display for ErrorCode {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
