//! `/proc/<pid>/stat` and `/proc/<pid>/status`: what identifies a process
//! over time (start time) and who it runs as.

/// Start time (field 22, clock ticks since boot) from a stat line.
///
/// The command name runs from the first `(` to the LAST `)`: it may itself
/// hold spaces and parentheses.
pub fn start_time(stat: &str) -> Result<u64, String> {
    let open = stat.find('(').ok_or("task name is not parenthesized")?;
    let close = stat.rfind(')').ok_or("task name is not parenthesized")?;
    if close < open {
        return Err("task name is not parenthesized".into());
    }
    // Fields after the name start at field 3 (state); start time is field 22.
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // Linux has printed at least 44 fields since 2.6; fewer means this is not a stat file.
    if rest.len() + 2 < 38 {
        return Err(format!("{} fields, expected at least 38", rest.len() + 2));
    }
    rest[22 - 3]
        .parse()
        .map_err(|e| format!("start time {:?}: {e}", rest[22 - 3]))
}

/// Real and effective uid and gid from a status file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub ruid: u32,
    pub euid: u32,
    pub rgid: u32,
    pub egid: u32,
}

pub fn ids(status: &str) -> Result<Ids, String> {
    let pair = |key: &str| -> Result<(u32, u32), String> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .ok_or_else(|| format!("no {key} line"))?;
        let mut it = line.split_whitespace().map(str::parse::<u32>);
        match (it.next(), it.next()) {
            (Some(Ok(r)), Some(Ok(e))) => Ok((r, e)),
            _ => Err(format!("bad {key} line {line:?}")),
        }
    };
    let (ruid, euid) = pair("Uid:")?;
    let (rgid, egid) = pair("Gid:")?;
    Ok(Ids {
        ruid,
        euid,
        rgid,
        egid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(comm: &str) -> String {
        let mut f: Vec<String> = (3..=52).map(|i| i.to_string()).collect();
        f[22 - 3] = "24".into();
        format!("1 ({comm}) {}", f.join(" "))
    }

    #[test]
    fn comm_with_spaces_and_parens() {
        assert_eq!(start_time(&line("cmd")), Ok(24));
        assert_eq!(start_time(&line("the cmd")), Ok(24));
        assert_eq!(start_time(&line("a) 9 9 (b")), Ok(24));
        assert_eq!(start_time(&line(")")), Ok(24));
    }

    #[test]
    fn rejects_bad_stat() {
        assert!(start_time("1 cmd S 2 3").is_err());
        assert!(start_time("1 (cmd) S 2 3").is_err());
        assert!(start_time(") 1 (").is_err());
    }

    #[test]
    fn status_ids() {
        let s = "Name:\tx\nUid:\t1000\t1001\t1000\t1000\nGid:\t5\t6\t5\t5\n";
        assert_eq!(
            ids(s),
            Ok(Ids {
                ruid: 1000,
                euid: 1001,
                rgid: 5,
                egid: 6
            })
        );
        assert!(ids("Name:\tx\n").is_err());
    }
}
