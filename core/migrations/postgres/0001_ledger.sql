-- Tables named as in the seed system so its readers feel at home; every row carries its campaign.
CREATE TABLE IF NOT EXISTS coupons (
    campaign        VARCHAR(64)  NOT NULL,
    coupon_id       BIGINT       NOT NULL,
    name            VARCHAR(255) NOT NULL,
    discount        BIGINT       NOT NULL,
    total_quantity  BIGINT       NOT NULL CHECK (total_quantity >= 0),
    created_at      TIMESTAMPTZ  NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign, coupon_id)
);

CREATE TABLE IF NOT EXISTS coupon_stocks (
    campaign            VARCHAR(64) NOT NULL,
    coupon_id           BIGINT      NOT NULL,
    remaining_quantity  BIGINT      NOT NULL,
    PRIMARY KEY (campaign, coupon_id),
    CONSTRAINT coupon_stocks_never_negative CHECK (remaining_quantity >= 0),
    FOREIGN KEY (campaign, coupon_id) REFERENCES coupons (campaign, coupon_id)
);

CREATE TABLE IF NOT EXISTS user_coupons (
    id          BIGSERIAL    PRIMARY KEY,
    campaign    VARCHAR(64)  NOT NULL,
    coupon_id   BIGINT       NOT NULL,
    user_id     BIGINT       NOT NULL,
    request_id  VARCHAR(36)  NOT NULL,
    issued_at   TIMESTAMPTZ  NOT NULL,
    CONSTRAINT user_coupons_one_per_user UNIQUE (campaign, coupon_id, user_id),
    CONSTRAINT user_coupons_request UNIQUE (request_id),
    FOREIGN KEY (campaign, coupon_id) REFERENCES coupons (campaign, coupon_id)
);
