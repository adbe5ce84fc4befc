"""`ftp-deploy eval`: zero-shot accuracy and perplexity of a routed model against baselines."""
