[ -d deps ] || tar xzf .carry/deps.tgz
(cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DW4A16_BUILD_TESTS=ON && cmake --build build-gpu -j 16) > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
B=build-gpu
W4A16_TEST_FAMILY=streaming_sm80 $B/tests/w4a16_gpu_tests --gtest_brief=1 > $OUT/tests.log 2>&1; echo "tests rc=$?"; tail -5 $OUT/tests.log
W4A16_TEST_FAMILY=streaming_sm80 compute-sanitizer --tool memcheck $B/tests/w4a16_gpu_tests --gtest_filter='*EveryConfig*m3_*:*EveryConfig*m17*:*BitIdentical*' > $OUT/memcheck.log 2>&1; grep "ERROR SUMMARY" $OUT/memcheck.log
for s in "4096 4096" "11008 4096" "4096 11008" "8192 8192" "28672 8192" "8192 28672"; do set -- $s; $B/w4a16 bench --m 1,8,16 --n $1 --k $2 --profile --repeats 5; done > $OUT/profile.log 2>&1
grep -E "^#|^ +[0-9]" $OUT/profile.log | cut -c1-250
