-- Tables named as in the seed system so its readers feel at home; every row carries its campaign.
CREATE TABLE IF NOT EXISTS coupons (
    campaign        TEXT    NOT NULL,
    coupon_id       INTEGER NOT NULL,
    name            TEXT    NOT NULL,
    discount        INTEGER NOT NULL,
    total_quantity  INTEGER NOT NULL CHECK (total_quantity >= 0),
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (campaign, coupon_id)
);

CREATE TABLE IF NOT EXISTS coupon_stocks (
    campaign            TEXT    NOT NULL,
    coupon_id           INTEGER NOT NULL,
    remaining_quantity  INTEGER NOT NULL CHECK (remaining_quantity >= 0),
    PRIMARY KEY (campaign, coupon_id),
    FOREIGN KEY (campaign, coupon_id) REFERENCES coupons (campaign, coupon_id)
);

CREATE TABLE IF NOT EXISTS user_coupons (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign    TEXT    NOT NULL,
    coupon_id   INTEGER NOT NULL,
    user_id     INTEGER NOT NULL,
    request_id  TEXT    NOT NULL,
    issued_at   TEXT    NOT NULL,
    UNIQUE (campaign, coupon_id, user_id),
    UNIQUE (request_id),
    FOREIGN KEY (campaign, coupon_id) REFERENCES coupons (campaign, coupon_id)
);
