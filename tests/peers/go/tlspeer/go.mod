module mtls-auditor/tests/peers/tlspeer

go 1.21
