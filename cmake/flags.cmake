# Compiler flags shared by the kernel project (csrc/cpu) and the bindings.
# -fno-trapping-math lets GCC if-convert float compares, so the ReLU-family
# backward loops vectorize; -ffp-contract=fast allows FMA contraction.
set(FASTNN_CXX_FLAGS -O3 -fno-math-errno -fno-trapping-math -ffp-contract=fast -Wall -Wextra -Wno-unused-parameter)
set(FASTNN_SANITIZE_FLAGS -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
if(FASTNN_SANITIZE)
  # The last -O wins, so -O1 overrides the build type's level. -g1 (line tables)
  # is all a report's stack trace needs (file:line per frame); full -g made the
  # instrumented build 35% slower to compile (gemm.cpp: 189 -> 123 s CPU).
  list(APPEND FASTNN_CXX_FLAGS ${FASTNN_SANITIZE_FLAGS} -O1 -g1)
endif()
