-- Tables named as in the seed system so its readers feel at home; every row carries its campaign.
CREATE TABLE IF NOT EXISTS coupons (
    campaign        VARCHAR(64)  NOT NULL,
    coupon_id       BIGINT       NOT NULL,
    name            VARCHAR(255) NOT NULL,
    discount        BIGINT       NOT NULL,
    total_quantity  BIGINT       NOT NULL,
    created_at      DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (campaign, coupon_id),
    CONSTRAINT coupons_quantity_not_negative CHECK (total_quantity >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS coupon_stocks (
    campaign            VARCHAR(64) NOT NULL,
    coupon_id           BIGINT      NOT NULL,
    remaining_quantity  BIGINT      NOT NULL,
    PRIMARY KEY (campaign, coupon_id),
    CONSTRAINT coupon_stocks_never_negative CHECK (remaining_quantity >= 0),
    CONSTRAINT coupon_stocks_coupon FOREIGN KEY (campaign, coupon_id) REFERENCES coupons (campaign, coupon_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS user_coupons (
    id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    campaign    VARCHAR(64)  NOT NULL,
    coupon_id   BIGINT       NOT NULL,
    user_id     BIGINT       NOT NULL,
    request_id  CHAR(36)     NOT NULL,
    issued_at   DATETIME(3)  NOT NULL,
    UNIQUE KEY user_coupons_one_per_user (campaign, coupon_id, user_id),
    UNIQUE KEY user_coupons_request (request_id),
    CONSTRAINT user_coupons_coupon FOREIGN KEY (campaign, coupon_id) REFERENCES coupons (campaign, coupon_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
