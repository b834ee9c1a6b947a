//! Splits a shell command line into its simple commands (lists of words, quotes
//! removed, redirections dropped). Not a shell: it refuses what it cannot analyse.

/// The command uses command or process substitution, or its quotes do not close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unsupported;

struct Heredoc {
    delim: String,
    strip_tabs: bool,
    /// Unquoted delimiter: the body is expanded (so `$(…)` in it runs).
    expands: bool,
}

struct Lexer {
    chars: Vec<char>,
    i: usize,
    segments: Vec<Vec<String>>,
    words: Vec<String>,
    word: String,
    in_word: bool,
    /// The next word is the target of a redirection, not an argument.
    redirect_target: bool,
    heredocs: Vec<Heredoc>,
}

/// The simple commands of `cmd`, each as its words.
pub(super) fn simple_commands(cmd: &str) -> Result<Vec<Vec<String>>, Unsupported> {
    Lexer {
        chars: cmd.chars().collect(),
        i: 0,
        segments: Vec::new(),
        words: Vec::new(),
        word: String::new(),
        in_word: false,
        redirect_target: false,
        heredocs: Vec::new(),
    }
    .run()
}

impl Lexer {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.i + ahead).copied()
    }

    fn push(&mut self, c: char) {
        self.word.push(c);
        self.in_word = true;
    }

    fn end_word(&mut self) {
        if self.in_word {
            let w = std::mem::take(&mut self.word);
            if self.redirect_target {
                self.redirect_target = false;
            } else {
                self.words.push(w);
            }
            self.in_word = false;
        }
    }

    fn end_segment(&mut self) {
        self.end_word();
        self.redirect_target = false;
        if !self.words.is_empty() {
            self.segments.push(std::mem::take(&mut self.words));
        }
    }

    fn run(mut self) -> Result<Vec<Vec<String>>, Unsupported> {
        while let Some(c) = self.peek(0) {
            match c {
                ' ' | '\t' | '\r' => {
                    self.end_word();
                    self.i += 1;
                }
                '\n' => {
                    self.end_segment();
                    self.i += 1;
                    self.skip_heredoc_bodies()?;
                }
                '#' if !self.in_word => {
                    while self.peek(0).is_some_and(|c| c != '\n') {
                        self.i += 1;
                    }
                }
                '\\' => {
                    match self.peek(1) {
                        Some('\n') => {}
                        Some(n) => self.push(n),
                        None => {}
                    }
                    self.i += 2;
                }
                '\'' => {
                    self.i += 1;
                    self.in_word = true;
                    loop {
                        let ch = self.peek(0).ok_or(Unsupported)?;
                        self.i += 1;
                        if ch == '\'' {
                            break;
                        }
                        self.word.push(ch);
                    }
                }
                '"' => self.double_quoted()?,
                '`' => return Err(Unsupported),
                '$' if self.peek(1) == Some('(') => return Err(Unsupported),
                ';' => {
                    self.end_segment();
                    self.i += 1;
                }
                '&' => {
                    if self.peek(1) == Some('>') {
                        // `&>file`, `&>>file`
                        self.end_word();
                        self.i += 2;
                        if self.peek(0) == Some('>') {
                            self.i += 1;
                        }
                        self.redirect_target = true;
                    } else {
                        self.end_segment();
                        self.i += if self.peek(1) == Some('&') { 2 } else { 1 };
                    }
                }
                '|' => {
                    self.end_segment();
                    self.i += if matches!(self.peek(1), Some('|' | '&')) {
                        2
                    } else {
                        1
                    };
                }
                '(' | ')' => {
                    self.end_segment();
                    self.i += 1;
                }
                '<' | '>' => self.redirection()?,
                c => {
                    self.push(c);
                    self.i += 1;
                }
            }
        }
        self.end_segment();
        Ok(self.segments)
    }

    fn double_quoted(&mut self) -> Result<(), Unsupported> {
        self.i += 1;
        self.in_word = true;
        loop {
            let ch = self.peek(0).ok_or(Unsupported)?;
            match ch {
                '"' => {
                    self.i += 1;
                    return Ok(());
                }
                '`' => return Err(Unsupported),
                '$' if self.peek(1) == Some('(') => return Err(Unsupported),
                '\\' => {
                    match self.peek(1) {
                        Some('\n') => {}
                        Some(n @ ('$' | '`' | '"' | '\\')) => self.word.push(n),
                        Some(n) => {
                            self.word.push('\\');
                            self.word.push(n);
                        }
                        None => return Err(Unsupported),
                    }
                    self.i += 2;
                }
                c => {
                    self.word.push(c);
                    self.i += 1;
                }
            }
        }
    }

    /// After `<` or `>`: the operator, and whether a target word follows.
    fn redirection(&mut self) -> Result<(), Unsupported> {
        // `2>`: the file descriptor is part of the operator.
        if self.in_word && !self.word.is_empty() && self.word.bytes().all(|b| b.is_ascii_digit()) {
            self.word.clear();
            self.in_word = false;
        } else {
            self.end_word();
        }
        let op = self.peek(0);
        self.i += 1;
        match (op, self.peek(0)) {
            (_, Some('(')) => return Err(Unsupported),
            (Some('<'), Some('<')) => {
                self.i += 1;
                if self.peek(0) == Some('<') {
                    // Here-string: the next word is data.
                    self.i += 1;
                    self.redirect_target = true;
                    return Ok(());
                }
                return self.heredoc();
            }
            (Some('<'), Some('>')) | (Some('>'), Some('>' | '|')) => self.i += 1,
            _ => {}
        }
        if self.peek(0) == Some('&') {
            // Duplication: `>&2`, `<&-`; a word only when no descriptor follows.
            self.i += 1;
            let start = self.i;
            while self.peek(0).is_some_and(|c| c.is_ascii_digit() || c == '-') {
                self.i += 1;
            }
            if self.i > start {
                return Ok(());
            }
        }
        self.redirect_target = true;
        Ok(())
    }

    fn heredoc(&mut self) -> Result<(), Unsupported> {
        let strip_tabs = self.peek(0) == Some('-');
        if strip_tabs {
            self.i += 1;
        }
        while matches!(self.peek(0), Some(' ' | '\t')) {
            self.i += 1;
        }
        let mut delim = String::new();
        let mut quoted = false;
        while let Some(c) = self.peek(0) {
            if c.is_whitespace() || ";&|<>()".contains(c) {
                break;
            }
            if matches!(c, '\'' | '"' | '\\') {
                quoted = true;
            } else {
                delim.push(c);
            }
            self.i += 1;
        }
        if delim.is_empty() {
            return Err(Unsupported);
        }
        self.heredocs.push(Heredoc {
            delim,
            strip_tabs,
            expands: !quoted,
        });
        Ok(())
    }

    /// At the start of a line after here-document operators: skips their bodies.
    fn skip_heredoc_bodies(&mut self) -> Result<(), Unsupported> {
        for h in std::mem::take(&mut self.heredocs) {
            loop {
                if self.peek(0).is_none() {
                    return Ok(());
                }
                let start = self.i;
                while self.peek(0).is_some_and(|c| c != '\n') {
                    self.i += 1;
                }
                let raw: String = self.chars[start..self.i].iter().collect();
                self.i += 1; // the newline
                let line = if h.strip_tabs {
                    raw.trim_start_matches('\t')
                } else {
                    raw.as_str()
                };
                if line == h.delim {
                    break;
                }
                if h.expands && (line.contains("$(") || line.contains('`')) {
                    return Err(Unsupported);
                }
            }
        }
        Ok(())
    }
}
