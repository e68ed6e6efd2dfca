//! The command line as the reference's server parses it.
//!
//! The request body holds one argument a line (a trailing `\r` is dropped); a first line
//! `session_id=<ref>` names a session to run in instead of logging in. The first argument is
//! the command; each other one is `name=value` (split at the first `=`; no `=` gives an empty
//! value), `--name` (the value `true`), or one of the two-part switches `-u`, `-pw`, `-s`,
//! `-h`, `-p` followed by its value.

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CommandLine {
    /// The command.
    pub cmdname: String,
    /// The program name help text uses.
    pub argv0: String,
    /// Parameters in command-line order; the first of a repeated name is the one that counts.
    pub params: Params,
}

/// Parameters in command-line order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Params(pub Vec<(String, String)>);

impl Params {
    /// The first value given for `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    /// Whether `name` was given.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
    /// The value of a required parameter (checked against the command's table before).
    pub fn req(&self, name: &str) -> Result<&str, super::CliError> {
        self.get(name)
            .ok_or_else(|| super::CliError::ParamNotFound(name.to_owned()))
    }
    /// A boolean parameter as the reference reads them (`true`, `t`, `yes`, `y`, `1` and
    /// their opposites, any case).
    pub fn bool(&self, name: &str, default: bool) -> Result<bool, super::CliError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => parse_bool(v).ok_or_else(|| {
                super::CliError::fail(format!(
                    "Failed to parse parameter '{name}': Expected 'true','t','yes','y','1','false','f','no','n','0' got {v}"
                ))
            }),
        }
    }
    /// `name:key=value` parameters as (key, value), as the reference's `read_map_params`.
    pub fn map(&self, name: &str) -> Vec<(String, String)> {
        let len = name.len() + 1;
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(name) && k.len() > len)
            .filter_map(|(k, v)| k.get(len..).map(|key| (key.to_owned(), v.clone())))
            .collect()
    }
}

/// The reference's boolean spellings.
pub(crate) fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" => Some(true),
        "false" | "f" | "no" | "n" | "0" => Some(false),
        _ => None,
    }
}

/// The switches that take the next argument as their value, and the parameter each sets.
const SWITCHES: &[(&str, &str)] = &[
    ("-u", "username"),
    ("-pw", "password"),
    ("-s", "server"),
    ("-h", "server"),
    ("-p", "port"),
];

/// Splits the body into lines and takes a leading `session_id=` line off.
pub(crate) fn parse_session_and_args(body: &str) -> (Option<String>, Vec<String>) {
    let args: Vec<String> = body
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_owned())
        .collect();
    match args.first().and_then(|l| l.strip_prefix("session_id=")) {
        Some(s) => (Some(s.to_owned()), args.get(1..).unwrap_or_default().to_vec()),
        None => (None, args),
    }
}

/// Parses the arguments after the program name. Any failure is the reference's bare syntax
/// error (it reports none of the details).
pub(crate) fn parse_commandline(args: &[String]) -> Result<CommandLine, super::CliError> {
    let syntax = || super::CliError::Syntax(String::new());
    let (cmdname, rest) = args.split_first().ok_or_else(syntax)?;
    if cmdname.contains('=') {
        return Err(syntax());
    }
    let mut params = Vec::new();
    let mut it = rest.iter();
    while let Some(p) = it.next() {
        if let Some(name) = p.strip_prefix("--") {
            params.push((name.to_owned(), "true".to_owned()));
        } else if p.starts_with('-') {
            let key = SWITCHES
                .iter()
                .find(|(s, _)| s == p)
                .map(|(_, k)| *k)
                .ok_or_else(syntax)?;
            let value = it.next().ok_or_else(syntax)?;
            params.push((key.to_owned(), value.clone()));
        } else {
            match p.split_once('=') {
                Some((k, v)) => params.push((k.to_owned(), v.to_owned())),
                None => params.push((p.clone(), String::new())),
            }
        }
    }
    Ok(CommandLine {
        cmdname: cmdname.clone(),
        argv0: "xe".to_owned(),
        params: Params(params),
    })
}

/// A size with an optional unit (`KiB`, `MiB`, `GiB`, `TiB`, their short forms, any case;
/// a space may separate it), as the reference reads disk and memory sizes.
pub(crate) fn bytes_of_string(field: &str, s: &str) -> Result<i64, super::CliError> {
    let bad = || {
        super::CliError::fail(format!(
            "Failed to parse field '{field}': expecting an integer (possibly with suffix KiB, MiB, GiB, TiB), got '{s}'"
        ))
    };
    let t = s.trim_start();
    let digits_end = t
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || (*i == 0 && (*c == '-' || *c == '+'))))
        .map_or(t.len(), |(i, _)| i);
    let (num, suffix) = t.split_at(digits_end);
    let n: i64 = num.parse().map_err(|_| bad())?;
    if n < 0 {
        return Err(bad());
    }
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" | "bytes" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1i64 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| (*x).to_owned()).collect()
    }

    fn pairs(p: &Params) -> Vec<(&str, &str)> {
        p.0.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn name_value_pairs_switches_and_flags() {
        let c = parse_commandline(&argv(&[
            "vm-list",
            "name-label=a=b",
            "--minimal",
            "params=uuid,power-state",
            "-u",
            "root",
            "bare",
            "other-config:k=v",
            "username=x",
        ]))
        .unwrap();
        assert_eq!(c.cmdname, "vm-list");
        assert_eq!(
            pairs(&c.params),
            vec![
                ("name-label", "a=b"),
                ("minimal", "true"),
                ("params", "uuid,power-state"),
                ("username", "root"),
                ("bare", ""),
                ("other-config:k", "v"),
                ("username", "x"),
            ]
        );
        // The first of a repeated name counts.
        assert_eq!(c.params.get("username"), Some("root"));
    }

    #[test]
    fn syntax_errors() {
        assert!(matches!(parse_commandline(&[]), Err(crate::cli::CliError::Syntax(_))));
        assert!(matches!(
            parse_commandline(&argv(&["uuid=x"])),
            Err(crate::cli::CliError::Syntax(_))
        ));
        assert!(matches!(
            parse_commandline(&argv(&["vm-list", "-x", "1"])),
            Err(crate::cli::CliError::Syntax(_))
        ));
        assert!(matches!(
            parse_commandline(&argv(&["vm-list", "-pw"])),
            Err(crate::cli::CliError::Syntax(_))
        ));
    }

    #[test]
    fn body_lines_and_the_session_line() {
        let (s, a) = parse_session_and_args("vm-list\r\n--minimal\nusername=root\npassword=p");
        assert_eq!(s, None);
        assert_eq!(a, argv(&["vm-list", "--minimal", "username=root", "password=p"]));
        let (s, a) = parse_session_and_args("session_id=OpaqueRef:1\r\nvm-list");
        assert_eq!(s.as_deref(), Some("OpaqueRef:1"));
        assert_eq!(a, argv(&["vm-list"]));
        assert_eq!(parse_session_and_args(""), (None, vec![String::new()]));
    }

    #[test]
    fn maps_bools_and_sizes() {
        let p = Params(vec![
            ("sm-config:type".into(), "raw".into()),
            ("sm-config:".into(), "no".into()),
            ("force".into(), "Yes".into()),
            ("shared".into(), "maybe".into()),
        ]);
        assert_eq!(p.map("sm-config"), vec![("type".to_owned(), "raw".to_owned())]);
        assert!(p.bool("force", false).unwrap());
        assert!(!p.bool("absent", false).unwrap());
        assert!(p.bool("shared", false).is_err());
        assert_eq!(bytes_of_string("s", "10").unwrap(), 10);
        assert_eq!(bytes_of_string("s", "1GiB").unwrap(), 1 << 30);
        assert_eq!(bytes_of_string("s", "4 MiB").unwrap(), 4 << 20);
        assert_eq!(bytes_of_string("s", "2k").unwrap(), 2048);
        assert!(bytes_of_string("s", "-1").is_err());
        assert!(bytes_of_string("s", "1 parsec").is_err());
        assert!(bytes_of_string("s", "").is_err());
        assert!(bytes_of_string("s", "9999999999T").is_err());
    }
}
