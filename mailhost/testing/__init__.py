"""An in-process SMTP+POP3+IMAP mail host for tests (like GreenMail)."""
