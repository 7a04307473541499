module fcfs-coupons/scripts/images/pause

go 1.24
